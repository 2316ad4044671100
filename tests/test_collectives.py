"""Every distributed collective of the package goes through ``modules/gradients._collective``, which runs
it on the parameters' device (NCCL rejects CPU tensors); checked on the source and on 2 gloo workers."""
import ast
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "fairseq_metabt")
DIST_MODULES = {"torch.distributed", "fairseq.distributed.utils", "fairseq.distributed", "fairseq.distributed_utils"}
COLLECTIVES = {
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_object", "all_gather_into_tensor",
    "all_gather_coalesced", "all_to_all", "all_to_all_single", "broadcast", "broadcast_object_list", "reduce",
    "reduce_scatter", "reduce_scatter_tensor", "gather", "gather_object", "scatter", "scatter_object_list",
    "barrier", "monitored_barrier", "send", "recv", "isend", "irecv", "batch_isend_irecv",
    # fairseq.distributed.utils
    "all_reduce_dict", "all_gather_list", "broadcast_object", "broadcast_tensors",
}
ALLOWED = {("modules/gradients.py", "_collective")}


def collective_calls(source: str):
    """(enclosing function, call) of every call of a torch.distributed / fairseq distributed collective."""
    tree = ast.parse(source)
    aliases, direct = set(), set()  # names bound to a distributed module / to one of its collectives
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in DIST_MODULES:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if f"{node.module}.{a.name}" in DIST_MODULES:
                    aliases.add(a.asname or a.name)
                elif node.module in DIST_MODULES and a.name in COLLECTIVES:
                    direct.add(a.asname or a.name)
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call):
                f = child.func
                if isinstance(f, ast.Attribute) and f.attr in COLLECTIVES and ast.unparse(f.value) in aliases | DIST_MODULES:
                    found.append((function, ast.unparse(f)))
                elif isinstance(f, ast.Name) and f.id in direct:
                    found.append((function, f.id))
            visit(child, inner)

    visit(tree, None)
    return found


def test_the_scanner_sees_every_spelling():
    src = ("import torch.distributed as d\nimport torch\nfrom fairseq.distributed import utils as du\n"
           "from torch.distributed import all_gather_object as ago\n"
           "def f(t):\n    d.all_reduce(t)\n    torch.distributed.broadcast(t, 0)\n    du.all_gather_list([1])\n"
           "    ago([None], 1)\n    du.get_data_parallel_rank()\n")
    assert [c for _, c in collective_calls(src)] == ["d.all_reduce", "torch.distributed.broadcast",
                                                     "du.all_gather_list", "ago"]


def test_no_collective_outside_the_helper():
    outside, inside = [], []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
                with open(path) as f:
                    for function, call in collective_calls(f.read()):
                        (inside if (rel, function) in ALLOWED else outside).append(f"{rel}:{function}: {call}")
    assert not outside, "collectives outside modules/gradients._collective:\n" + "\n".join(outside)
    assert inside, "the helper itself must be found by the scan"


def test_collective_device_is_the_parameters_or_the_backends(monkeypatch):
    from fairseq_metabt.modules import gradients as G

    t = torch.zeros(2)
    assert G.collective_device(t, device=torch.device("cuda", 1)) == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert G.collective_device(t) == torch.device("cuda", 0), "NCCL: CPU tensors go to the rank's GPU"
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert G.collective_device(t) == t.device


def test_without_workers_collectives_are_identities():
    from fairseq_metabt.modules import gradients as G

    t = torch.tensor([1.0, 3.0])
    assert G.all_reduce_(t, "max") is t and t.tolist() == [1.0, 3.0]
    assert G.all_gather_objects({"a": 1}) == [{"a": 1}]
    with pytest.raises(ValueError, match="unknown reduction"):
        G.all_reduce_(t, "prod")


def _worker(rank: int, port: int, out) -> None:
    from fairseq_metabt.modules import gradients as G

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x = torch.tensor([1.0 + rank, -2.0 * rank], dtype=torch.float64)
        mean = G.all_reduce_mean_(x.clone(), device="cpu")
        top = G.all_reduce_(torch.tensor([float(rank)]), "max")
        total = G.all_reduce_(torch.tensor([rank + 1]), "sum")
        rows = G.all_gather_objects({rank: [rank] * (rank + 1)})
        spread = G.check_replicas([1.0 + 0.5 * rank], 1.0, "test")
        out.put((rank, mean.tolist(), float(top), int(total), rows, spread))
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, mean, top, total, rows, spread in results:
        assert mean == [1.5, -1.0] and top == 1.0 and total == 3
        assert rows == [{0: [0]}, {1: [1, 1]}]
        assert spread == pytest.approx(0.5)
