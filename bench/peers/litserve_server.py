"""Peer (d): LitServe serving the same torch module with the same numpy preprocessing.

    bench/.venv-peers/bin/python bench/peers/litserve_server.py --model-dir DIR --port 8002 [--workers 2]
        [--batch 32 --batch-timeout 0.005]

Default: 2 inference workers on the CPU, no batching (the better of the two settings measured on 2 cores).
"""


import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_model import NumpyModel


class DigitsAPI(ls.LitAPI):
    """dataframe_split in, ``{"predictions": [...]}`` out; with batching, blocks are stacked."""

    def __init__(self, model_dir: str, **options: Any) -> None:
        super().__init__(api_path="/invocations", **options)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = NumpyModel(self.model_dir)

    def decode_request(self, request: dict) -> np.ndarray:  # a real type: LitServe reads it for FastAPI
        return self.model.block(request["dataframe_split"])

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs

    def predict(self, x: Any) -> Any:
        if isinstance(x, list):  # a batch: one forward pass, answers split per request
            answers = self.model.predict(np.concatenate(x))
            bounds = np.cumsum([0] + [len(part) for part in x])
            return [answers[start:stop] for start, stop in itertools.pairwise(bounds)]
        return self.model.predict(x)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": output}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--batch-timeout", type=float, default=0.0)
    args = parser.parse_args()
    api = DigitsAPI(args.model_dir, max_batch_size=args.batch, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
