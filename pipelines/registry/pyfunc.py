"""The MLflow pyfunc model that wraps a UGPNet bundle (MLflow "models from code").

MLflow loads this file by path when the model is loaded, so the wrapper is code, never a pickle;
the weights travel as the bundle artifact (safetensors). `predict` takes and returns images:
a DataFrame with a column `image` of encoded bytes (PNG/JPEG/WebP/…) → a DataFrame with `image`
(PNG bytes of the fused result: 16-bit for a 16-bit input, with the input's ICC profile and EXIF
unless `strip_metadata`), `width`, `height`, and `error` for inputs that could not be decoded or do
not fit the model under the `fit` param.

Params (declared, with their defaults, by the signature registry.log_bundle logs, without which
MLflow drops them): `fit` ("resize", "tile" or "error"), `precision` ("fp32", "bf16"; "fp16" on CUDA
only) and `strip_metadata` (false). A param this device cannot honour fails the request as a whole.
"""

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


class UGPNetPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        import ugpnet

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = ugpnet.load(context.artifacts["bundle"], device=device)
        self.device = device

    # Type hints: MLflow 3 checks them against the logged signature (a DataFrame hint defers to it).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        from pipelines.registry.store import PYFUNC_PARAM_DEFAULTS
        from ugpnet.fitting import FitError, numpy_to_tensor, tensor_to_numpy
        from ugpnet.image_metadata import ImageMetadata
        from ugpnet.images import ImageDecodeError, decode_image, encode_image
        from ugpnet.inference import autocast, check_precision

        params = {**PYFUNC_PARAM_DEFAULTS, **(params or {})}
        check_precision(params["precision"], torch.device(self.device).type)  # before any image
        rows = []
        for data in model_input["image"]:
            try:
                decoded = decode_image(bytes(data))
                with torch.inference_mode(), autocast(params["precision"], torch.device(self.device)):
                    fused = self.model.restore(numpy_to_tensor(decoded.rgb).to(self.device), fit=params["fit"])
            # this image, not the batch, is bad: undecodable, or against the policy (fit="error", wrong size)
            except (ImageDecodeError, FitError) as exc:
                rows.append({"image": b"", "width": 0, "height": 0, "error": str(exc)})
                continue
            rgb = tensor_to_numpy(fused.float().cpu())
            metadata = ImageMetadata() if params["strip_metadata"] else decoded.metadata
            image = encode_image(rgb, fmt="png", bit_depth=decoded.bit_depth, metadata=metadata)
            rows.append({"image": image, "width": rgb.shape[1], "height": rgb.shape[0], "error": ""})
        return pd.DataFrame(rows, columns=["image", "width", "height", "error"])


set_model(UGPNetPyfunc())
