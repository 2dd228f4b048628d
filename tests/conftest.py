"""Shared test fixtures."""

import socket

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run fastest on one intra-op thread; on a loaded 2-core machine a second
    thread makes them many times slower (spin-waiting). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A width-16 NeRF checkpoint (untrained, seeded) scored against the primitives scene."""
    from nerfcomp.model import NeRF, NeRFConfig, save_checkpoint

    torch.manual_seed(0)
    model = NeRF(NeRFConfig(width=16))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="session")
def free_port():
    """A function returning a free TCP port on the loopback interface."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def client(free_port):
    """A gradio_client Client of the explorer, launched in this process (shared by the app,
    upload and fuzz tests)."""
    from gradio_client import Client

    import app

    demo = app.build_demo().queue()
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_port=free_port(), quiet=True, **app.LAUNCH
    )
    yield Client(url, verbose=False)
    demo.close()
