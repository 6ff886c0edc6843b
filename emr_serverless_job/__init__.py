"""Fruit photos to MobileNetV2 + PCA features in Parquet, with PySpark on EMR Serverless."""
