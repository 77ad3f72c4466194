"""A real OCI registry for the tests: Debian's ``docker-registry`` (the CNCF distribution registry),
started on a free loopback port with its own config and storage, and filled over the plain OCI
HTTP API with Ollama-style models (config blob, GGUF, template and params layers, manifest)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import end_process, free_port

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
OLLAMA = "application/vnd.ollama.image."


@dataclass(frozen=True)
class Pushed:
    """What a push put in the registry: the manifest's bytes and each layer's digest by type."""

    manifest: bytes
    digests: dict[str, str]

    @property
    def model_digest(self) -> str:
        return self.digests["model"]


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class DockerRegistry:
    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> DockerRegistry:
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.home / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n")
        log = (self.home / "registry.log").open("ab")
        self.process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.home / "registry.log").read_text())
            try:
                if self.http.get("/v2/").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        self.http.close()
        if self.process is not None:
            end_process(self.process, timeout=10)

    # --- the OCI push API ----------------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes | Path) -> tuple[str, int]:
        content = data.read_bytes() if isinstance(data, Path) else data
        digest = sha256_digest(content)
        if self.http.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
            return digest, len(content)
        started = self.http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        upload = httpx.URL(started.headers["location"]).copy_merge_params({"digest": digest})
        done = self.http.put(upload, content=content,
                             headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest, len(content)

    def push_manifest(self, repository: str, tag: str, manifest: bytes) -> None:
        response = self.http.put(f"/v2/{repository}/manifests/{tag}", content=manifest,
                                 headers={"Content-Type": MANIFEST_TYPE})
        assert response.status_code == 201, response.text

    def push_model(self, repository: str, tag: str, gguf_file: Path,
                   template: str | None = None, params: dict[str, Any] | None = None,
                   system: str | None = None, draft: Path | None = None) -> Pushed:
        """Push an Ollama-style model, as ``ollama push`` lays it out (``draft``: a draft model's
        GGUF, as a draft layer)."""
        digests: dict[str, str] = {}
        layers = []
        texts = {"template": template, "system": system,
                 "params": json.dumps(params) if params is not None else None}
        for kind, content in [("model", gguf_file), ("draft", draft), *texts.items()]:
            if content is None:
                continue
            data = content if isinstance(content, Path) else content.encode()
            digest, size = self.push_blob(repository, data)
            digests[kind] = digest
            layers.append({"mediaType": OLLAMA + kind, "digest": digest, "size": size})
        config = json.dumps({"model_format": "gguf", "model_family": "llama",
                             "model_families": ["llama"], "file_type": "F32"}).encode()
        config_digest, config_size = self.push_blob(repository, config)
        digests["config"] = config_digest
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
            "layers": layers,
        }).encode()
        self.push_manifest(repository, tag, manifest)
        return Pushed(manifest, digests)
