"""rs_hashing: unsupervised cross-modal hashing for remote-sensing image-text retrieval."""

import setuptools

setuptools.setup(
    name="rs_hashing",
    version="0.1.0",
    description="DUCH and CHNR cross-modal hashing for remote-sensing archives (Keras 3 / TensorFlow)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=setuptools.find_packages(include=["rs_hashing", "rs_hashing.*"]),
    package_data={"rs_hashing": ["data/resources/*"]},
    install_requires=[
        # `tensorflow`, not `tensorflow-cpu`: tensorflow-text (pulled by keras-hub)
        # depends on `tensorflow`, and both together would install two copies.
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "keras-hub>=0.32,<0.33",
        "tensorflow-hub>=0.16,<0.17",
        "tensorflow-text>=2.21,<2.22",
        "absl-py>=2.1",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "faiss-cpu>=1.9",
        "ai-edge-litert>=2.0",
        "flatbuffers>=24",  # edits TFLite files (fp16 weight compression)
        "simplejpeg>=1.7",  # the ground station decodes JPEGs exactly as tf.io.decode_image does
        # Exports write TF Serving warm-up requests; the serving contract is part of the product.
        "tensorflow-serving-api>=2.21,<2.22",
        "tensorboard>=2.20",  # TF 2.21 no longer pulls it; runs write TensorBoard logs
        "safetensors>=0.4",  # keras-hub reads Hugging Face-format folders (the MiniLM default) with it
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "psycopg[binary]>=3.1"],
        "postgres": ["psycopg[binary]>=3.1"],
    },
)
