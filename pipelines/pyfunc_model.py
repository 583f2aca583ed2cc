"""The MLflow pyfunc model that wraps a UGPNet bundle (MLflow "models from code").

MLflow loads this file by path when the model is loaded, so the wrapper is code, never a pickle;
the weights travel as the bundle artifact (safetensors). `predict` takes and returns images:
a DataFrame with a column `image` of encoded bytes (PNG/JPEG/WebP/…) → a DataFrame with `image`
(PNG bytes of the fused result), `width`, `height`, and `error` for inputs that could not be decoded
or do not fit the model under the `fit` param ("resize" by default, "tile", or "error"; the signature
that registry.log_bundle logs declares it, without which MLflow drops params).
"""

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

    def predict(self, context, model_input, params=None):
        import torch

        from ugpnet.fitting import FitError, numpy_to_tensor, tensor_to_numpy
        from ugpnet.images import ImageDecodeError, decode_image, encode_image

        fit = (params or {}).get("fit", "resize")
        rows = []
        for data in model_input["image"]:
            try:
                decoded = decode_image(bytes(data))
                with torch.inference_mode():
                    fused = self.model.restore(numpy_to_tensor(decoded.rgb).to(self.device), fit=fit)
            # this image, not the batch, is bad: undecodable, or against the policy (fit="error", wrong size)
            except (ImageDecodeError, FitError) as exc:
                rows.append({"image": b"", "width": 0, "height": 0, "error": str(exc)})
                continue
            rgb = tensor_to_numpy(fused.cpu())
            rows.append({"image": encode_image(rgb, fmt="png"), "width": rgb.shape[1], "height": rgb.shape[0],
                         "error": ""})
        return pd.DataFrame(rows, columns=["image", "width", "height", "error"])


set_model(UGPNetPyfunc())
