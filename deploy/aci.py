"""Deploy the scoring service (``deploy/score.py``) to Azure Container Instances.

Two routes:

* ``sdk`` (default): the Azure ML SDK v1 (``azureml-core``) registers the model folder,
  builds an environment from ``deploy/environment.yml`` plus a wheel of this project, and
  deploys ``score.py`` to ACI with key authentication.
* ``az``: runs the image built from ``deploy/Dockerfile`` (pushed to a registry, with the
  model folder copied in, or mounted from an Azure Files share) with ``az container create``.

``--dry-run`` prints both configurations as JSON; it needs no Azure credentials and does not
import the SDK. Exit status: 0 done, 1 the deployment failed, 2 bad usage, bad model folder or
a missing tool (``azureml-core``, the ``az`` CLI).

    python -m deploy.aci --model-dir DIR --name NAME --cpu 2 --memory-gb 4 \\
        [--route sdk|az] [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from deploy.modeldir import (
    MODEL_CARD_ENV,
    MODEL_FILE_ENV,
    ModelDirError,
    find_card,
    find_weights,
)

logger = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = DEPLOY_DIR.parent
CONDA_FILE = DEPLOY_DIR / "environment.yml"
PORT = 5001
#: Where the image built from deploy/Dockerfile expects the model folder.
IMAGE_MODEL_DIR = "/var/azureml-app/model"
DEFAULT_IMAGE = "<registry>.azurecr.io/cxr-node-azure:0.1.0"
REGISTRY_PASSWORD_ENV = "CXR_NODE_REGISTRY_PASSWORD"
STORAGE_KEY_ENV = "AZURE_STORAGE_KEY"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UsageError(Exception):
    """Bad arguments or model folder (exit 2)."""


class MissingToolError(Exception):
    """The SDK or CLI a real deployment needs is not installed (exit 2)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_card(path: Path) -> dict[str, Any]:
    """The card's fields (JSON or YAML), for tags; validated for real by the service."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise UsageError(f"model card {path} is not a mapping")
    return data


def parse_env(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_NAME_RE.match(key):
            raise UsageError(f"--env {pair!r}: use NAME=VALUE")
        out[key] = value
    return out


def describe_model(model_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """The weights and card the service will load (same rule as score.py), checked here."""
    try:
        weights = find_weights(model_dir, env)
        card = find_card(model_dir, weights, env)
    except ModelDirError as e:
        raise UsageError(str(e)) from None
    model_dir = model_dir.resolve()
    for what, path in (("weights", weights), ("model card", card)):
        if path is not None and not path.resolve().is_relative_to(model_dir):
            raise UsageError(f"the {what} {path} is outside the model folder {model_dir}")
    info: dict[str, Any] = {
        "model_dir": str(model_dir),
        "weights": weights.resolve().relative_to(model_dir).as_posix(),
        "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size,
        "card": card.resolve().relative_to(model_dir).as_posix() if card else None,
    }
    if card is not None:
        try:
            fields = read_card(card)
        except (OSError, ValueError) as e:
            raise UsageError(f"model card {card} cannot be read: {e}") from None
        info["card_name"] = str(fields.get("name", ""))
        info["card_version"] = str(fields.get("version", ""))
    return info


def service_env(args: argparse.Namespace, model: dict[str, Any], prefix: str) -> dict[str, str]:
    """Environment variables of the service; model paths relative to its model folder."""
    env = {"CXR_NODE_HTTP_MAX_BODY_MB": f"{args.max_body_mb:g}", **parse_env(args.env)}
    env[MODEL_FILE_ENV] = prefix + model["weights"]  # the files checked here, made explicit
    if model["card"]:
        env[MODEL_CARD_ENV] = prefix + model["card"]
    return env


def tags(args: argparse.Namespace, model: dict[str, Any]) -> dict[str, str]:
    out = {"project": "cxr-node", "sha256": model["sha256"], "weights": model["weights"]}
    if model.get("card_name"):
        out["card_name"] = model["card_name"]
        out["card_version"] = model["card_version"]
    return out


def sdk_config(args: argparse.Namespace, model: dict[str, Any]) -> dict[str, Any]:
    """What the Azure ML SDK route does, as data (the real deploy follows it)."""
    folder = Path(model["model_dir"]).name
    return {
        "workspace": {"config_file": args.workspace_config
                      or "Workspace.from_config(): ./config.json or .azureml/config.json"},
        "model": {
            "model_path": model["model_dir"],
            "model_name": args.model_name or args.name,
            "tags": tags(args, model),
            "description": "cxr-node chest X-ray model (weights and model card)",
            "note": f"registered as a folder: the service sees AZUREML_MODEL_DIR/{folder}/",
        },
        "environment": {
            "name": f"{args.name}-env",
            "conda_file": str(CONDA_FILE),
            "project_wheel": f"built from {PROJECT_ROOT} with 'pip wheel --no-deps' and added "
                             "with Environment.add_private_pip_wheel",
            "environment_variables": service_env(args, model, f"{folder}/"),
        },
        "inference_config": {"entry_script": "score.py", "source_directory": str(DEPLOY_DIR)},
        "deploy_configuration": {
            "cpu_cores": args.cpu,
            "memory_gb": args.memory_gb,
            "auth_enabled": True,
            "enable_app_insights": args.app_insights,
            "location": args.location,
            "tags": tags(args, model),
            "description": "cxr-node chest X-ray scoring (research use only)",
        },
        "deploy": {"name": args.name, "overwrite": True},
    }


def _number(x: float) -> str:
    return f"{x:g}"


def registry_of(image: str) -> str | None:
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first) else None


def az_config(args: argparse.Namespace, model: dict[str, Any]) -> dict[str, Any]:
    """The ``az container create`` command for the plain image; secrets stay ``$VAR``."""
    env = service_env(args, model, "")
    cmd = ["az", "container", "create",
           "--resource-group", args.resource_group or "<resource-group>",
           "--name", args.name, "--image", args.image, "--os-type", "Linux",
           "--cpu", _number(args.cpu), "--memory", _number(args.memory_gb),
           "--ports", str(PORT), "--protocol", "TCP", "--ip-address", args.ip_address,
           "--restart-policy", "Always"]
    if args.ip_address == "Public":
        cmd += ["--dns-name-label", args.dns_name_label or args.name]
    if args.location:
        cmd += ["--location", args.location]
    registry = registry_of(args.image)
    if args.registry_username and registry:
        cmd += ["--registry-login-server", registry, "--registry-username",
                args.registry_username, "--registry-password", f"${REGISTRY_PASSWORD_ENV}"]
    if args.file_share:
        cmd += ["--azure-file-volume-account-name", args.storage_account,
                "--azure-file-volume-account-key", f"${STORAGE_KEY_ENV}",
                "--azure-file-volume-share-name", args.file_share,
                "--azure-file-volume-mount-path", IMAGE_MODEL_DIR]
    cmd += ["--environment-variables", *(f"{k}={v}" for k, v in env.items())]
    notes = [
        "the image listens on port 5001: POST /score (scoring), GET /score (model card), "
        "GET / (liveness)",
        "a plain container has no authentication: keep it on a private network "
        "(--ip-address Private with a virtual network) or behind a gateway",
    ]
    if args.file_share:
        notes.append(f"the model folder's contents come from file share {args.file_share}, "
                     f"mounted at {IMAGE_MODEL_DIR}; the account key is read from "
                     f"${STORAGE_KEY_ENV}")
    else:
        notes.append(f"the image must hold the model folder's contents at {IMAGE_MODEL_DIR} "
                     "(see README `Deploy to Azure`: build a model image)")
    return {"command": cmd, "shell": shell_line(cmd), "notes": notes}


def shell_line(cmd: list[str]) -> str:
    """``cmd`` as one shell line; ``$VAR`` secrets are left for the shell to expand."""
    return " ".join(f'"{a}"' if re.fullmatch(r"\$[A-Z_]+", a) else shlex.quote(a) for a in cmd)


def configuration(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model_dir)
    if not NAME_RE.match(args.name):
        raise UsageError(f"--name {args.name!r}: 3-32 lowercase letters, digits and dashes, "
                         "starting with a letter and not ending with a dash")
    if args.cpu <= 0 or args.memory_gb <= 0:
        raise UsageError("--cpu and --memory-gb must be > 0")
    if bool(args.file_share) != bool(args.storage_account):
        raise UsageError("--file-share and --storage-account go together")
    model = describe_model(model_dir, parse_env(args.env))
    return {"route": args.route, "name": args.name, "model": model,
            "sdk": sdk_config(args, model), "az": az_config(args, model)}


def import_sdk() -> dict[str, Any]:
    """The azureml-core classes a real SDK deploy needs (imported only here)."""
    try:
        from azureml.core import Environment, Model, Workspace
        from azureml.core.model import InferenceConfig
        from azureml.core.webservice import AciWebservice
    except ImportError:
        raise MissingToolError("azureml-core is not installed: pip install azureml-core "
                          "(or use --dry-run, or --route az)") from None
    return {"Environment": Environment, "Model": Model, "Workspace": Workspace,
            "InferenceConfig": InferenceConfig, "AciWebservice": AciWebservice}


def build_wheel(out: Path) -> Path:
    """A wheel of this project (the packages score.py imports)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(out), str(PROJECT_ROOT)], check=True)
    wheels = sorted(out.glob("cxr_node-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no cxr_node wheel into {out}")
    return wheels[-1]


def deploy_sdk(config: dict[str, Any]) -> None:
    """Register the model, build the environment and deploy to ACI with azureml-core."""
    sdk = import_sdk()
    c = config["sdk"]
    workspace_cls = sdk["Workspace"]
    config_file = c["workspace"]["config_file"]
    ws = (workspace_cls.from_config(path=config_file) if Path(config_file).is_file()
          else workspace_cls.from_config())
    m = c["model"]
    model = sdk["Model"].register(workspace=ws, model_path=m["model_path"],
                                  model_name=m["model_name"], tags=m["tags"],
                                  description=m["description"])
    e = c["environment"]
    env = sdk["Environment"].from_conda_specification(name=e["name"], file_path=e["conda_file"])
    with tempfile.TemporaryDirectory() as tmp:
        url = sdk["Environment"].add_private_pip_wheel(workspace=ws, file_path=str(
            build_wheel(Path(tmp))), exist_ok=True)
    env.python.conda_dependencies.add_pip_package(url)
    env.environment_variables = e["environment_variables"]
    inference_config = sdk["InferenceConfig"](environment=env, **c["inference_config"])
    d = c["deploy_configuration"]
    deployment_config = sdk["AciWebservice"].deploy_configuration(
        **{k: v for k, v in d.items() if v is not None})
    service = sdk["Model"].deploy(ws, c["deploy"]["name"], [model], inference_config,
                                  deployment_config, overwrite=c["deploy"]["overwrite"])
    service.wait_for_deployment(show_output=True)
    if service.state != "Healthy":
        raise RuntimeError(f"service {service.name} is {service.state}: "
                           f"{service.get_logs()[-2000:]}")
    print(json.dumps({"name": service.name, "state": service.state,
                      "scoring_uri": service.scoring_uri,
                      "keys": "Webservice(ws, name).get_keys() (sent as 'Authorization: "
                              "Bearer KEY')"}))


def deploy_az(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Run the ``az container create`` command, secrets taken from the environment."""
    if shutil.which("az") is None:
        raise MissingToolError("the Azure CLI (az) is not installed: see "
                          "https://learn.microsoft.com/cli/azure/install-azure-cli")
    if not args.resource_group or args.image == DEFAULT_IMAGE:
        raise UsageError("--route az needs --resource-group and --image (a pushed image)")
    cmd = []
    for arg in config["az"]["command"]:
        if re.fullmatch(r"\$[A-Z_]+", arg):
            value = os.environ.get(arg[1:])
            if not value:
                raise UsageError(f"{arg[1:]} is not set")
            arg = value
        cmd.append(arg)
    subprocess.run(cmd, check=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.aci",
                                description="Deploy the cxr-node scoring service to Azure "
                                "Container Instances.")
    p.add_argument("--model-dir", required=True, help="folder with the weights and model card")
    p.add_argument("--name", required=True, help="service / container group name")
    p.add_argument("--cpu", type=float, default=2.0, help="CPU cores (default 2)")
    p.add_argument("--memory-gb", type=float, default=4.0, help="memory in GB (default 4)")
    p.add_argument("--route", choices=("sdk", "az"), default="sdk",
                   help="Azure ML SDK (default) or az container create with the plain image")
    p.add_argument("--dry-run", action="store_true",
                   help="print both routes' configuration as JSON and deploy nothing")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment variable of the service (repeatable)")
    p.add_argument("--location", help="Azure region (default: the workspace's / group's)")
    sdk = p.add_argument_group("sdk route")
    sdk.add_argument("--workspace-config", help="Azure ML workspace config.json")
    sdk.add_argument("--model-name", help="registered model name (default: --name)")
    sdk.add_argument("--app-insights", action="store_true", help="enable Application Insights")
    az = p.add_argument_group("az route")
    az.add_argument("--resource-group", help="resource group of the container group")
    az.add_argument("--image", default=DEFAULT_IMAGE, help="image built from deploy/Dockerfile")
    az.add_argument("--ip-address", choices=("Public", "Private"), default="Public")
    az.add_argument("--dns-name-label", help="DNS label of a public IP (default: --name)")
    az.add_argument("--registry-username",
                    help=f"registry user; the password is read from ${REGISTRY_PASSWORD_ENV}")
    az.add_argument("--file-share", help="Azure Files share holding the model folder")
    az.add_argument("--storage-account",
                    help=f"storage account of --file-share; key read from ${STORAGE_KEY_ENV}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = configuration(args)
        if args.dry_run:
            print(json.dumps(config, indent=2))
            return 0
        if args.route == "sdk":
            deploy_sdk(config)
        else:
            deploy_az(config, args)
    except (UsageError, MissingToolError) as e:
        print(f"deploy.aci: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the SDK and az raise many types; the message is what counts
        logger.debug("deployment failed", exc_info=True)
        print(f"deploy.aci: deployment failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
