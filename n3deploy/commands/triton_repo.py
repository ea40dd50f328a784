"""``n3deploy triton-repo``: a Triton Inference Server model repository for an exported graph (and plan)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton-repo",
        help="write a Triton model repository (config.pbtxt + model) for an ONNX graph / TensorRT plan",
        description=(
            "Write a Triton Inference Server model repository: REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx "
            "(onnxruntime backend), plus REPO/NAME_trt/ (platform tensorrt_plan, the plan's profile) with --plan. "
            "Configs are built as Triton's ModelConfig protobuf, parsed back and cross-checked against the graph "
            "and plan metadata; the repository is written to a temporary folder and renamed into place. "
            "Batching (max_batch_size > 0, dynamic batcher) only for graphs exported with a dynamic batch axis "
            "(`n3deploy export --batch dynamic`). See docs/serving.md.\n\n"
            "examples:\n"
            "  n3deploy triton-repo --onnx m.onnx -o repo\n"
            "  n3deploy triton-repo --onnx m16.onnx --plan m.plan -o repo --gpu --instances 2 --max-batch 16\n"
            "  docker run --rm -p8000:8000 -v $PWD/repo:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
            "tritonserver --model-repository=/models"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--onnx", type=Path, required=True, help="the exported ONNX graph")
    p.add_argument("--plan", type=Path, default=None, help="a TensorRT plan (with its .plan.json metadata) to add as NAME_trt")
    p.add_argument("-o", "--out", type=Path, required=True, help="repository folder to create")
    p.add_argument("--name", default="n3net", help="model name (default n3net)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size for graphs with a dynamic batch axis (default 8)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per instance (default cores // instances)")
    p.add_argument("--gpu", action="store_true", help="KIND_GPU instances and the TensorRT execution accelerator (FP16, engine cache)")
    p.add_argument("--force", action="store_true", help="replace REPO if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serving.triton_repo import RepoOptions, read_config, write_triton_repo

    options = RepoOptions(name=args.name, instances=args.instances, max_batch=args.max_batch, gpu=args.gpu, threads=args.threads)
    for path in write_triton_repo(args.onnx, args.out, args.plan, options, overwrite=args.force):
        config = read_config(path)
        batching = f"max_batch_size {config.max_batch_size}" if config.max_batch_size else "no batching (fixed batch axis)"
        dims = ", ".join(f"{t.name} {list(t.dims)}" for t in config.input)
        print(f"wrote {path.parent} ({config.platform}; {dims}; {batching}; checked against the model)")
    repo = args.out.resolve()
    print(f"serve it: docker run --rm -p8000:8000 -v {repo}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
          "tritonserver --model-repository=/models")
    return 0
