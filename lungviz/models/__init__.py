"""Models: cards, the registry read from weights/, architectures, pretrained backbones, compact storage."""
