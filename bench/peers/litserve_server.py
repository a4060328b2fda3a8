"""Peer (d): LitServe serving the same torch module with the same numpy preprocessing.

    bench/.venv-peers/bin/python bench/peers/litserve_server.py --model-dir DIR --port 8002 [--workers 2]
        [--batch 32 --batch-timeout 0.01]

Default: 2 inference workers (and so 2 API server processes), no batching: on 2 cores the better setting where
per-request overhead dominates (digits; 1 worker batching up to 32 requests matched it at 32 connections and
was 8x slower at 1, waiting out its timeout). Where the forward pass dominates (the 4096-wide MLP),
``--workers 1 --batch 32 --batch-timeout 0.01`` is the better one (about 2x the requests/s at 32 connections),
and ``bench/serve_bench.py`` serves that model so.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import litserve as ls
import numpy as np
from numpy_model import NumpyModel  # this script's folder is on sys.path, and so on its workers'


class PeerAPI(ls.LitAPI):
    """``POST /invocations``: ``{"dataframe_split": {...}}`` in, ``{"predictions": [...]}`` out."""

    def __init__(self, model_dir: str, **options: Any) -> None:
        super().__init__(api_path="/invocations", **options)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = NumpyModel(self.model_dir)

    def decode_request(self, request):  # unannotated: LitServe hands over the parsed JSON, FastAPI checks nothing
        return self.model.block(request["dataframe_split"])

    def predict(self, block: np.ndarray) -> list[dict[str, Any]]:
        return self.model.predict(block)

    def encode_response(self, output):  # unannotated: no response model for FastAPI to validate against
        return {"predictions": output}


class BatchedPeerAPI(PeerAPI):
    """The same with LitServe's batching: the requests' blocks in one forward pass, answers split back."""

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs

    def predict(self, blocks: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        answers = self.model.predict(np.concatenate(blocks))
        bounds = np.cumsum([0] + [len(block) for block in blocks]).tolist()
        return [answers[start:stop] for start, stop in itertools.pairwise(bounds)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="inference worker processes")
    parser.add_argument("--batch", type=int, default=1, help="max_batch_size (1: no batching)")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds, with --batch above 1")
    args = parser.parse_args()
    api = (PeerAPI(args.model_dir) if args.batch == 1 else
           BatchedPeerAPI(args.model_dir, max_batch_size=args.batch, batch_timeout=args.batch_timeout))
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
