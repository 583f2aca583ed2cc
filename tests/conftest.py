import sys
from pathlib import Path

# Test helper modules (fixtures that rebuild official weights) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
