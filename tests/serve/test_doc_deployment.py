"""The reference document's "Example: Model Deployment" deploys unchanged and answers Infer.

Its ``_get_model`` calls ``torch.load(model_path)`` on a pickled module. torch 2.13 loads only
allow-listed classes by default, and the example allow-lists none, so this deployment's
replicas, and only they, run with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: the test gives it
to them through the action's runtime env, the way a plugin author would. The test process
and every other replica keep torch's safe loading. The model is a plain
``torch.nn.Sequential``, which every replica can import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.plugins import LocalModelBackend, load_plugin
from synapse_sdk.testing import ActionEnvironment
from synapse_server.core.deployments import DeploymentService
from synapse_server.core.inference import InferenceService, InferRequestData, ServeKeyring
from synapse_server.ray import RayRuntime, ServeDeploymentBackend, ServeRouter
from synapse_server.stores import SqliteDeploymentStore

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

PLUGIN = Path(__file__).resolve().parent / "plugins" / "doc_deployment"
DOCUMENT = Path(__file__).resolve().parents[3] / "shared" / "spec" / "inference-actions.md"
SECRET = b"doc-deployment-secret-0123456789abcdef"
TENANT = "acme"
APP = "doc-deployment-app"
MARKER = "# --- the document's code, unchanged ---\n# fmt: off\n"
#: Makes torch.load unpickle whatever the file names: for the document's replicas only.
UNSAFE_LOAD_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def _document_block() -> str:
    text = DOCUMENT.read_text(encoding="utf-8")
    section = text[text.index("### Example: Model Deployment") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    return code[: code.index("```")]


def test_the_plugin_holds_the_documents_code_unchanged() -> None:
    if not DOCUMENT.is_file():
        pytest.skip(f"the reference document is not at {DOCUMENT}")
    source = (PLUGIN / "doc_deployment_plugin.py").read_text(encoding="utf-8")
    assert source[source.index(MARKER) + len(MARKER) :] == _document_block()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("doc-models")
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    (root / "1").mkdir()
    torch.save(model, root / "1" / "model.pt")
    return root


@pytest.fixture(scope="module")
def deployed(ray_session: str, model_dir: Path) -> Any:
    from ray import serve

    keyring = ServeKeyring(SECRET)
    plugin = load_plugin(PLUGIN)
    action = plugin.get_action_class("deployment")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNAPSE_SERVE_SIGNING_KEY", keyring.tenant_key(TENANT).hex())
        patch.setenv("SYNAPSE_TENANT", TENANT)
        patch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", APP)
        # BaseDeploymentAction.get_runtime_env is the replicas' runtime env (env_vars
        # included); the document's action keeps the default, so the test sets it.
        patch.setattr(action, "get_runtime_env", lambda self: {"env_vars": UNSAFE_LOAD_ENV})
        env = ActionEnvironment(model_backend=LocalModelBackend(root=model_dir))
        # The document's DeploymentParams defaults to one GPU; this machine has none.
        result = env.run(action, {"model": 1, "num_gpus": 0})
    yield result, env
    serve.delete(APP)


@pytest.fixture
async def inference(deployed: Any, tmp_path: Path) -> AsyncIterator[InferenceService]:
    runtime = RayRuntime()
    router = ServeRouter(runtime)
    store = SqliteDeploymentStore(tmp_path / "synapse.db")
    await store.open()
    deployments = DeploymentService(store, ServeDeploymentBackend(runtime, router))
    await runtime.ensure_started()  # registration never starts Ray itself
    await deployments.register(
        TENANT,
        name=APP,
        plugin="doc-deployment",
        action="deployment",
        model_ids=[1],
        endpoint_action="inference",
    )
    yield InferenceService(deployments, router, ServeKeyring(SECRET))
    await router.close()
    await store.close()


def test_deployment_reports_the_documents_progress(deployed: Any) -> None:
    result, env = deployed
    assert result == {"serve_application": None}  # no platform to register with here
    assert [(p.category, p.current, p.total) for p in env.progress_events()] == [
        ("initialize", 1, 3),
        ("deploy", 2, 3),
        ("register", 3, 3),
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_infer_answers_with_the_pickled_model(
    inference: InferenceService, model_dir: Path
) -> None:
    import torch

    inputs = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]
    result = await inference.infer(
        TENANT,
        InferRequestData(
            application=APP,
            model_id="1",
            json=[{"data": values} for values in inputs],
            has_json=True,
        ),
    )
    model = torch.load(model_dir / "1" / "model.pt", weights_only=False)
    with torch.no_grad():
        expected = [model(torch.tensor(values)).tolist() for values in inputs]
    assert [item["prediction"] for item in result.json] == [
        pytest.approx(row, rel=1e-6) for row in expected
    ]
