"""MLServer custom runtime for the tests: `add` (OUTPUT0 = INPUT0 + INPUT1), the shape of
triton_models/add, served by MLServer as a second KServe v2 implementation.

Runs inside `.venv-mlserver` (MLServer's own environment), never imported by volley."""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class AddModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        by_name = {t.name: NumpyCodec.decode_input(t) for t in payload.inputs}
        total = by_name["INPUT0"] + by_name["INPUT1"]
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("OUTPUT0", total)],
        )
