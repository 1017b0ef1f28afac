"""Install the Neuroverse3D BIDS-App.

The top-level folders ``model/`` and ``workflows/`` are installed as
``neuroverse_bids.model`` and ``neuroverse_bids.workflows``: no generic top-level names land in
site-packages.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "neuroverse_bids" / "__init__.py").read_text()).group(1)

PACKAGE_DIR = {"neuroverse_bids": "neuroverse_bids",
               "neuroverse_bids.model": "model",
               "neuroverse_bids.workflows": "workflows"}
PACKAGES = []
for name, folder in PACKAGE_DIR.items():
    PACKAGES.append(name)
    PACKAGES += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    name="neuroverse3d",
    version=VERSION,
    description="Neuroverse3D 3D in-context learning as a BIDS-App",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"neuroverse_bids.model": ["pretrained_weights/*"],
                  "neuroverse_bids.workflows.reports": ["templates/*.j2"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "safetensors",
        "nibabel>=5",
        "scipy",
        "nipype>=1.8",
        "pybids>=0.16",
        "templateflow>=25.1",  # templateflow.client.TemplateFlowClient
        "antspyx>=0.4",
        "nilearn>=0.10",
        "matplotlib",
        "jinja2>=3",
        "bids-validator-deno",  # the app validates its input dataset (--skip-bids-validation)
    ],
    extras_require={"test": ["pytest", "pytest-timeout"]},
    entry_points={
        "console_scripts": [
            "neuroverse3d=neuroverse_bids.cli.run:main",
            "neuroverse3d-predict=neuroverse_bids.cli.predict:main",
            "neuroverse3d-slurm=neuroverse_bids.cli.slurm:main",
            "neuroverse3d-convert=neuroverse_bids.model.convert:main",
            "neuroverse3d-train=neuroverse_bids.model.training.cli:main",
            "neuroverse3d-manifest=neuroverse_bids.cli.manifest:main",
            "neuroverse3d-demo-data=neuroverse_bids.cli.demo_data:main",
            "neuroverse3d-demo=neuroverse_bids.cli.demo:main",
            "neuroverse3d-cache=neuroverse_bids.cli.cache:main",
            "neuroverse3d-make-training-data=neuroverse_bids.anatomy.cli:main",
            "neuroverse3d-make-labelmap-data=neuroverse_bids.anatomy.labelmaps:main",
            "neuroverse3d-eval=neuroverse_bids.evaluation.cli:main",
            "neuroverse3d-eval-heldout=neuroverse_bids.evaluation.heldout:main",
        ]
    },
)
