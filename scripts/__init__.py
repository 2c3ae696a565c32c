"""Custom code of the knee-cartilage EAS U-Net bundle, referenced from `configs/` as `scripts.<module>.<Name>`."""
