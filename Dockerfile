# Neuroverse3D BIDS-App image: Python 3.11, pinned CPU torch, the package with its bundled model,
# MNI152NLin2009aSym in TemplateFlow's layout (from nilearn's wheel, no download), a non-root
# user (uid 1000) and `neuroverse3d` as the entry point. Works on a read-only root: everything
# the app writes goes to the output, the work folder (-w) or /tmp.
#
#   docker build -t neuroverse3d:0.1.0 .                 # CPU torch from download.pytorch.org
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t neuroverse3d:cuda .
#
# Without a registry: scripts/make-base-image.sh makes localhost/neuroverse3d-base:bookworm, then
# `buildah bud --build-arg BASE=localhost/neuroverse3d-base:bookworm --build-arg TORCH_WHEELS=...`
# (the README's "Containers and clusters" has the whole command; tests/test_container.py runs it).
#
# The released checkpoint (neuroverse3D.ckpt, see the README), when it lies in the build context,
# is converted to /opt/neuroverse3d/neuroverse3d_released.safetensors (use it with --model; its
# template MNI152NLin2009cAsym must then be bound, or fetched with FETCH_TEMPLATES).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG BASE

ARG TORCH_VERSION=2.13.0
# where torch comes from: the CPU index (default) or a CUDA one; or, when TORCH_WHEELS names a
# folder (a build volume) holding the CPU wheel, that wheel (torch==VERSION+cpu, which PyPI's
# multi-GB CUDA build never matches; torch's own dependencies come from PyPI)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=
# a pip cache folder (a build volume) reused between builds; empty: no cache kept
ARG PIP_CACHE=
# TemplateFlow templates to download at build time (needs internet), e.g. MNI152NLin2009cAsym
ARG FETCH_TEMPLATES=

# HOME=/tmp: caches (~/.cache/neuroverse3d, matplotlib's ~/.config) land in /tmp for any uid and
# on a read-only root; Apptainer sets HOME to the user's home itself.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NO_ET=1 \
    NIPYPE_NO_ET=1 \
    THP_MEM_ALLOC_ENABLE=1 \
    HOME=/tmp

# torch first (the README's install), checked: the pinned version, and no CUDA libraries
# unless a CUDA index was asked for. Lean: torch's C++ tests and headers go (nothing here
# compiles), as do the other packages' test suites below (each in the layer that installs it)
RUN python3 -m venv /opt/venv \
 && if [ -n "${TORCH_WHEELS}" ]; then \
        pip install --cache-dir "${PIP_CACHE:-/tmp/pip-cache}" --find-links "${TORCH_WHEELS}" "torch==${TORCH_VERSION}+cpu"; \
    else \
        pip install --cache-dir "${PIP_CACHE:-/tmp/pip-cache}" --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"; \
    fi \
 && python -c "import sys, torch; v = torch.__version__; sys.exit(0 if v.split('+')[0] == '${TORCH_VERSION}' else f'torch {v} is not ${TORCH_VERSION}')" \
 && case "${TORCH_WHEELS}${TORCH_INDEX}" in \
        */cu*|*/rocm*) ;; \
        *) if pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "a CUDA build of torch was installed" >&2; exit 1; fi ;; \
    esac \
 && torch=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))") \
 && rm -rf "$torch/test" "$torch/include" "$torch"/bin/*Test "$torch"/bin/test_* \
 && find /tmp /root -mindepth 1 -delete

# the package's dependencies (a layer that only setup.py invalidates: a stub package stands in
# for the sources; bids-validator-deno among them, with which the app validates its input);
# torch stays the one above; then the package itself, offline (--no-deps, --no-build-isolation)
COPY setup.py /src/
RUN mkdir -p /src/model /src/workflows /src/neuroverse_bids && touch /src/README.md \
 && echo '__version__ = "0"' >/src/neuroverse_bids/__init__.py \
 && pip install --cache-dir "${PIP_CACHE:-/tmp/pip-cache}" --prefer-binary "torch==${TORCH_VERSION}" /src \
 && pip uninstall -y -q neuroverse3d \
 && rm -rf /src && find /tmp /root -mindepth 1 -delete \
 && find "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" -depth -type d \
        -name tests ! -path '*/nilearn/*' ! -path '*/mpmath/*' ! -path '*/nicom/*' -exec rm -rf {} +
COPY setup.py README.md /src/
COPY model/ /src/model/
COPY workflows/ /src/workflows/
COPY neuroverse_bids/ /src/neuroverse_bids/
RUN pip install --no-cache-dir --no-deps --no-build-isolation --no-index /src \
 && pip check \
 && rm -rf /src && find /tmp /root -mindepth 1 -delete \
 && python -c "from neuroverse_bids.model import default_model_path; default_model_path()" \
 && neuroverse3d --version && bids-validator-deno --version

# TemplateFlow home, read-only at run time: MNI152NLin2009aSym (the bundled model's space) made
# from nilearn's packaged MNI152 2009a files, as the demo and the tests make it (no download)
RUN python -c "from neuroverse_bids.workflows.templates import fill_templateflow_home; fill_templateflow_home('${TEMPLATEFLOW_HOME}')" \
 && if [ -n "${FETCH_TEMPLATES}" ]; then \
        python -c "import sys; from templateflow.api import get; [get(t, resolution=1, suffix=s, desc=d, extension='.nii.gz') for t in sys.argv[1:] for s, d in (('T1w', None), ('mask', 'brain'))]" ${FETCH_TEMPLATES}; \
    fi \
 && chmod -R a+rX,go-w "${TEMPLATEFLOW_HOME}" && find /tmp /root -mindepth 1 -delete

# the released checkpoint, when given, converted to the project format (with its grid); the
# mount points (a read-only root cannot make them at run time): /data the BIDS dataset,
# /labels a labels dataset, /out the derivatives, /work the work folder; and the user
COPY setup.py neuroverse3D.ckp[t] /tmp/model/
RUN mkdir -p /opt/neuroverse3d \
 && if [ -f /tmp/model/neuroverse3D.ckpt ]; then \
        neuroverse3d-convert /tmp/model/neuroverse3D.ckpt /opt/neuroverse3d/neuroverse3d_released.safetensors; \
    fi \
 && chmod -R a+rX /opt/neuroverse3d && find /tmp /root -mindepth 1 -delete \
 && mkdir -p /data /labels /out /work \
 && (useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /bin/sh neuroverse \
     || { echo 'neuroverse:x:1000:1000::/tmp:/bin/sh' >>/etc/passwd; echo 'neuroverse:x:1000:' >>/etc/group; })

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["neuroverse3d"]
CMD ["--help"]

# labels last: a new version or revision rebuilds no layer
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/jiesihu/Neuroverse3D
LABEL org.opencontainers.image.title="neuroverse3d" \
      org.opencontainers.image.description="Neuroverse3D 3D in-context learning as a BIDS-App (CPU torch, bundled model)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE}"
