"""Write the bundled classification demo set: ML project titles + descriptions tagged with their field.

Four classes of deliberately uneven size (like real project catalogues), CSV with a header, deterministic:

    python scripts/make_classification_data.py

Writes data/demo/projects.csv (training), data/demo/projects_holdout.csv (for `tuneforge eval`) and leaves the
hand-written behavioural checks in data/demo/projects_checks.yaml alone.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

CLASSES = {
    "natural-language-processing": {
        "count": 150,
        "subjects": ["sentiment analysis", "named entity recognition", "machine translation", "text summarization",
                     "question answering", "topic modelling", "spam detection", "chatbots", "text classification",
                     "speech-to-text transcripts", "semantic search", "language modelling", "paraphrase detection",
                     "document parsing", "grammar correction"],
        "methods": ["BERT", "transformers", "word embeddings", "tokenizers", "attention", "seq2seq models",
                    "a fine-tuned LLM", "RNNs", "TF-IDF features", "prompting", "sentence embeddings"],
        "objects": ["tweets", "product reviews", "news articles", "legal contracts", "support tickets",
                    "medical notes", "subtitles", "emails", "scientific abstracts", "forum posts"],
    },
    "computer-vision": {
        "count": 110,
        "subjects": ["object detection", "image segmentation", "image classification", "pose estimation",
                     "face recognition", "optical character recognition", "image generation", "depth estimation",
                     "video tracking", "super-resolution", "style transfer", "anomaly detection in images"],
        "methods": ["CNNs", "YOLO", "vision transformers", "U-Net", "diffusion models", "ResNet", "data augmentation",
                    "GANs", "contrastive pretraining", "Mask R-CNN"],
        "objects": ["satellite photos", "X-ray scans", "street scenes", "product photos", "drone footage",
                    "handwritten forms", "security camera video", "microscope slides", "selfies", "crop fields"],
    },
    "mlops": {
        "count": 65,
        "subjects": ["model serving", "experiment tracking", "feature stores", "CI/CD for models", "model monitoring",
                     "data versioning", "pipeline orchestration", "drift detection", "distributed training jobs",
                     "model registries", "inference autoscaling"],
        "methods": ["Kubernetes", "Docker", "Ray", "MLflow", "Airflow", "GitHub Actions", "Prometheus",
                    "a REST API", "Terraform", "DVC"],
        "objects": ["production models", "batch pipelines", "GPU clusters", "deployment workflows",
                    "training runs", "latency dashboards", "rollbacks", "canary releases"],
    },
    "other": {
        "count": 45,
        "subjects": ["time-series forecasting", "recommendation systems", "reinforcement learning", "tabular data",
                     "graph neural networks", "fraud detection", "demand planning", "causal inference",
                     "bayesian optimization", "clustering customers"],
        "methods": ["gradient boosting", "XGBoost", "Q-learning", "matrix factorization", "ARIMA",
                    "random forests", "graph convolutions", "Gaussian processes"],
        "objects": ["sales data", "sensor readings", "click logs", "stock prices", "energy usage",
                    "game environments", "supply chains", "bank transactions"],
    },
}

# Methods every field uses: a title that names only these says little about the field.
SHARED_METHODS = ["PyTorch", "transformers", "deep learning", "self-supervised pretraining", "a small neural network",
                  "transfer learning", "contrastive learning", "scikit-learn"]
GENERIC_DESCRIPTIONS = ["Notes and code from a weekend project.", "Work in progress; feedback welcome.",
                        "Slides and recording from our meetup talk.", "Companion repository for the blog post."]

TITLES = [
    "{Subject} with {method}",
    "{Subject} for {objects}",
    "A practical guide to {subject}",
    "{Method} for {subject}",
    "Scaling {subject} on {objects}",
    "Lessons from {subject} in production",
    "{Subject}: from notebook to results",
]
DESCRIPTIONS = [
    "We apply {method} to {subject} on {objects} and compare against simple baselines.",
    "A walkthrough of {subject} using {method}, with code and a small benchmark on {objects}.",
    "This project explores {subject} for {objects}; {method} gave the best trade-off of speed and quality.",
    "Tutorial covering data preparation, {method} and evaluation for {subject}.",
    "How we built {subject} for {objects} with {method}, and what we would do differently.",
    "Open-source repository for {subject}. Uses {method}; includes notebooks and tests.",
]


def make_rows(rng: random.Random) -> list[dict[str, str]]:
    """Each row mostly uses its own field's words, but borrows methods every field uses (40%), objects from
    another field (25%), sometimes says nothing useful in its description (10%); MLOps rows often deploy another
    field's model ("serving a face recognition model"); 2% of labels are wrong, as in any hand-tagged catalogue."""
    tags = list(CLASSES)
    rows = []
    for tag, vocab in CLASSES.items():
        others = [CLASSES[t] for t in tags if t != tag]
        for _ in range(vocab["count"] + vocab["count"] // 5):  # extra rows become the hold-out set
            subject = rng.choice(vocab["subjects"])
            if tag == "mlops" and rng.random() < 0.4:
                subject = f"{subject} for a {rng.choice(rng.choice(others)['subjects'])} model"
            method = rng.choice(SHARED_METHODS if rng.random() < 0.4 else vocab["methods"])
            objects = rng.choice(rng.choice(others)["objects"] if rng.random() < 0.25 else vocab["objects"])
            words = {"subject": subject, "method": method, "objects": objects}
            words.update({key.capitalize(): value[0].upper() + value[1:] for key, value in words.items()})
            description = (rng.choice(GENERIC_DESCRIPTIONS) if rng.random() < 0.1
                           else rng.choice(DESCRIPTIONS).format(**words))
            label = rng.choice(tags) if rng.random() < 0.02 else tag
            rows.append({"title": rng.choice(TITLES).format(**words), "description": description, "tag": label})
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "title", "description", "tag"])
        writer.writeheader()
        for number, row in enumerate(rows, start=1):
            writer.writerow({"id": number, **row})


def main() -> None:
    rng = random.Random(404)
    rows = make_rows(rng)
    holdout_size = sum(vocab["count"] // 5 for vocab in CLASSES.values())
    out = Path("data/demo")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "projects.csv", rows[holdout_size:])
    write_csv(out / "projects_holdout.csv", rows[:holdout_size])


if __name__ == "__main__":
    main()
