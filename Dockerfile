# Neuroverse3D BIDS-App image.
#
#   docker build -t neuroverse3d .                      # CPU torch (default)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t neuroverse3d:cuda .
#
# The bundled default model comes with the package. When the released checkpoint
# (neuroverse3D.ckpt, see the README) lies in the build context, it is converted to the project
# format as /opt/neuroverse3d/neuroverse3d_released.safetensors (use it with --model).
FROM python:3.11.7-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NO_ET=1 \
    THP_MEM_ALLOC_ENABLE=1 \
    HOME=/home/neuroverse

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# The README's install: torch first (CPU, or the CUDA build through TORCH_INDEX), then the package.
RUN python -m pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY setup.py README.md ./
COPY model/ model/
COPY workflows/ workflows/
COPY neuroverse_bids/ neuroverse_bids/
RUN python -m pip install "torch==${TORCH_VERSION}" . \
 && cd / && rm -rf /src
WORKDIR /

# Templates, fetched once at build time, readable by any user (the app never downloads).
RUN python -c "from templateflow.api import get; \
[get(t, resolution=1, suffix='T1w', desc=None, extension='.nii.gz') for t in ('MNI152NLin2009cAsym', 'MNI152NLin2009aSym')]; \
[get(t, resolution=1, desc='brain', suffix='mask', extension='.nii.gz') for t in ('MNI152NLin2009cAsym', 'MNI152NLin2009aSym')]" \
 && chmod -R a+rX "${TEMPLATEFLOW_HOME}"

# The released checkpoint, when given, converted to the project format (with its grid).
COPY setup.py neuroverse3D.ckp[t] /tmp/model/
RUN python -c "import neuroverse_bids.cli.participant as p; assert p.BUNDLED_MODEL.is_file()" \
 && mkdir -p /opt/neuroverse3d \
 && if [ -f /tmp/model/neuroverse3D.ckpt ]; then \
        neuroverse3d-convert /tmp/model/neuroverse3D.ckpt /opt/neuroverse3d/neuroverse3d_released.safetensors; \
    fi \
 && chmod -R a+rX /opt/neuroverse3d && rm -rf /tmp/model

# A non-root user; the home is writable by any uid (docker run -u $(id -u)).
RUN useradd --create-home --uid 1000 --shell /bin/bash neuroverse \
 && chmod a+rwx /home/neuroverse
USER neuroverse
WORKDIR /home/neuroverse

ENTRYPOINT ["neuroverse3d"]
