"""`BarePipe`: the smallest object the loader verbs work on (a UNet, optionally a text encoder and tokenizer)."""

from miva.loaders import MIVALoaderMixin


class BarePipe(MIVALoaderMixin):
    def __init__(self, unet, text_encoder=None, tokenizer=None):
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
