"""SAM-based refiner (DESIGN §1.6-1.7): coarse logits + phrase tokens -> refined logits at original size.

SAM's image encoder is frozen (no gradient, always in eval mode); its prompt encoder and mask decoder train.
Per phrase the prompts are: a box (the bounding box of sigmoid(coarse) > 0.5 at the original image size,
detached, the whole image when empty), a dense mask (the coarse logits resized into SAM's mask-input frame,
not detached, so the refiner loss also trains the mask head) and one sparse token per phrase token (phrase
hidden states mixed over layers with learnable softmax weights, then projected to SAM's prompt width),
appended after the two box-corner tokens. One decoder pass gives a single mask per phrase.

All phrases of a batch are decoded together, each against its own image's embedding (SAM's
`MaskDecoder.predict_masks` repeats one image's embedding for every prompt). SAM's two-way transformer has
no key padding mask, so phrases are grouped by their number of tokens: one decoder call per distinct count.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flmm.masks import mask_boxes
from flmm.models.sam_build import build_sam
from flmm.models.sam_cache import SamEmbeddingCache, encoder_fingerprint
from flmm.models.sam_import import MaskDecoder, Sam
from flmm.registry import MODELS


def decode_masks(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompts: torch.Tensor,
    dense_prompts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's `MaskDecoder.forward(..., multimask_output=False)` with one image embedding per prompt.

    Args:
        decoder: SAM's mask decoder (its public submodules are used).
        image_embeddings: `(N, C, h, w)`, the embedding of each prompt's own image.
        image_pe: `(1, C, h, w)` dense positional encoding (`PromptEncoder.get_dense_pe()`).
        sparse_prompts: `(N, K, C)`, no padding tokens (the transformer has no key padding mask).
        dense_prompts: `(N, C, h, w)`.

    Returns:
        masks `(N, 1, 4h, 4w)` low-resolution logits, iou predictions `(N, 1)`.
    """
    n = sparse_prompts.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompts], dim=1)
    src = image_embeddings + dense_prompts
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
    # Token 0 is the IoU token, token 1 the single-mask output that multimask_output=False selects.
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = decoder.output_hypernetworks_mlps[0](hs[:, 1])
    masks = (hyper_in.unsqueeze(1) @ upscaled.flatten(2)).view(b, 1, *upscaled.shape[-2:])
    iou = decoder.iou_prediction_head(hs[:, 0])[:, :1]
    return masks, iou


@dataclass
class RefinerOutput:
    """What the refiner returns for P phrases.

    masks: P refined logit maps, each `(H_i, W_i)` at its image's original size.
    low_res_logits: `(P, 4h, 4w)` decoder logits in SAM's padded mask frame (256x256 for real SAM).
    iou_predictions: `(P,)` SAM's predicted IoU of each mask (its head is frozen, not trained).
    boxes: `(P, 4)` box prompts `(x0, y0, x1, y1)` in SAM's input frame.
    """

    masks: list[torch.Tensor]
    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor
    boxes: torch.Tensor


@MODELS.register_module()
class SamRefiner(nn.Module):
    """SAM with a frozen image encoder, prompted per phrase by box, coarse mask and phrase tokens.

    Args:
        hidden_size: D, width of the LMM hidden states.
        num_layers: L, number of LMM layers whose hidden states are mixed.
        model_type: `vit_b`, `vit_l`, `vit_h` (need `checkpoint`) or `tiny` (tests, toy configs).
        checkpoint: path of the SAM state dict: an official `.pth`, or a `.safetensors` (the tiny SAM).
        encoder_batch_size: images per image-encoder call (bounds the encoder's activation memory).
        embedding_cache: keep image embeddings instead of re-encoding (`flmm.models.sam_cache`): null
            (off), `memory`, or a folder for fp16 files shared by ranks and runs.
        sam: an already built SAM to use instead of `model_type` / `checkpoint` (e.g. random weights at the
            real size for benchmarks).
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        model_type: str = "vit_l",
        checkpoint: str | None = None,
        encoder_batch_size: int = 4,
        embedding_cache: str | None = None,
        sam: Sam | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.encoder_batch_size = encoder_batch_size
        self.sam = build_sam(model_type, checkpoint) if sam is None else sam
        self.sam.image_encoder.requires_grad_(False)
        # Parts the box + dense + single-mask path never uses: frozen so that every trainable parameter
        # gets a gradient (DDP then needs no find_unused_parameters) and none is silently decayed.
        prompt_encoder, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        for unused in (
            prompt_encoder.point_embeddings[0],
            prompt_encoder.point_embeddings[1],
            prompt_encoder.not_a_point_embed,
            prompt_encoder.no_mask_embed,
            decoder.iou_prediction_head,
            *decoder.output_hypernetworks_mlps[1:],
        ):
            unused.requires_grad_(False)
        # A plain attribute, not a submodule: cached embeddings are never part of the state dict.
        self.embedding_cache = None
        if embedding_cache is not None:
            folder = None if embedding_cache == "memory" else embedding_cache
            self.embedding_cache = SamEmbeddingCache(encoder_fingerprint(self.sam.image_encoder), folder)
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))
        self.text_proj = nn.Linear(hidden_size, prompt_encoder.embed_dim)
        self.train()

    def train(self, mode: bool = True) -> "SamRefiner":
        super().train(mode)
        self.sam.image_encoder.eval()
        return self

    @property
    def image_size(self) -> int:
        """Side of SAM's square input frame (1024 for real SAM)."""
        return self.sam.image_encoder.img_size

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of an `height x width` image resized so its longest side is `image_size` (SAM's rule)."""
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 `(3, H, W)` -> normalised `(3, S, S)`: longest side resized to S, padded bottom-right."""
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"refiner images must be uint8 RGB tensors (3, H, W), got {image.dtype} {tuple(image.shape)}"
            )
        size = self.input_size(*image.shape[-2:])
        x = image.to(self.sam.pixel_mean.device, torch.float32)[None]
        # Antialiased bilinear and rounding to integers mirror SAM's PIL-based ResizeLongestSide.
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x.clamp(0, 255).round()[0] - self.sam.pixel_mean) / self.sam.pixel_std
        return F.pad(x, (0, self.image_size - size[1], 0, self.image_size - size[0]))

    @torch.no_grad()
    def encode_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 images `(3, H_i, W_i)` -> frozen SAM embeddings `(B, C, h, w)` (256x64x64 for real SAM).

        Deterministic per image, so callers may cache them and pass them to `forward`.
        """
        dtype = self.sam.image_encoder.patch_embed.proj.weight.dtype
        batch = torch.stack([self.preprocess(image) for image in images]).to(dtype)
        return torch.cat([self.sam.image_encoder(x) for x in batch.split(self.encoder_batch_size)])

    def image_embeddings(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """`encode_images`, through the embedding cache when there is one."""
        if self.embedding_cache is None:
            return self.encode_images(images)
        weight = self.sam.image_encoder.patch_embed.proj.weight
        return self.embedding_cache.embeddings(images, self.encode_images, weight.device, weight.dtype)

    def language_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """Phrase-token hidden states `(P, T, L, D)` -> prompt tokens `(P, T, C)`."""
        weights = self.layer_weights.softmax(dim=0)
        mixed = torch.einsum("ptld,l->ptd", hidden.to(weights.dtype), weights)
        return self.text_proj(mixed.to(self.text_proj.weight.dtype))

    def mask_prompt(self, logits: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """Coarse logits `(h, w)` on the image content -> `(4h_e, 4w_e)` in SAM's mask-input frame."""
        frame_h, frame_w = self.sam.prompt_encoder.mask_input_size
        content = (
            max(1, round(input_size[0] * frame_h / self.image_size)),
            max(1, round(input_size[1] * frame_w / self.image_size)),
        )
        resized = F.interpolate(logits[None, None], size=content, mode="bilinear", align_corners=False)[0, 0]
        pad_value = logits.detach().min().clamp(max=-1.0)
        padding = (0, frame_w - content[1], 0, frame_h - content[0])
        return F.pad(resized - pad_value, padding) + pad_value

    @torch.no_grad()
    def box_prompt(
        self, logits: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> torch.Tensor:
        """Coarse logits `(h, w)` -> box `(4,)` of sigmoid > 0.5 at the original size, in SAM's frame."""
        upsampled = F.interpolate(
            logits[None, None], size=original_size, mode="bilinear", align_corners=False
        )
        inside = upsampled[0, 0] > 0  # sigmoid(x) > 0.5 <=> x > 0
        whole = torch.tensor([0.0, 0.0, original_size[1], original_size[0]], device=inside.device)
        box = torch.where(inside.any(), mask_boxes(inside[None])[0].float(), whole)
        scale = torch.tensor(
            [input_size[1] / original_size[1], input_size[0] / original_size[0]] * 2, device=box.device
        )
        return box * scale

    def _check_inputs(self, images, coarse_logits, image_index, hidden, hidden_mask) -> None:
        n = len(coarse_logits)
        if image_index.shape != (n,):
            raise ValueError(f"image_index must have shape ({n},), got {tuple(image_index.shape)}")
        if n and not 0 <= int(image_index.min()) <= int(image_index.max()) < len(images):
            raise ValueError(f"image_index must lie in 0..{len(images) - 1}, got {image_index.tolist()}")
        if (
            hidden.dim() != 4
            or hidden.shape[0] != n
            or hidden.shape[2:] != (self.num_layers, self.hidden_size)
        ):
            raise ValueError(
                f"hidden must have shape ({n}, T, {self.num_layers}, {self.hidden_size}), "
                f"got {tuple(hidden.shape)}"
            )
        if hidden_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"hidden_mask must have shape {tuple(hidden.shape[:2])}, got {hidden_mask.shape}"
            )

    def forward(
        self,
        images: Sequence[torch.Tensor],
        coarse_logits: Sequence[torch.Tensor],
        image_index: torch.Tensor,
        hidden: torch.Tensor,
        hidden_mask: torch.Tensor,
        image_embeddings: torch.Tensor | None = None,
    ) -> RefinerOutput:
        """Refine P phrases' coarse masks.

        Args:
            images: B original images, uint8 `(3, H_i, W_i)`, sizes may differ.
            coarse_logits: P maps `(h_p, w_p)` cropped to the image content (any size, content aspect).
            image_index: `(P,)` long, index into `images` of each phrase.
            hidden: `(P, T, L, D)` hidden states of each phrase's tokens, zero-padded to T.
            hidden_mask: `(P, T)` bool, True for the phrase's real tokens.
            image_embeddings: optional cached `encode_images(images)` output `(B, C, h, w)`.
        """
        self._check_inputs(images, coarse_logits, image_index, hidden, hidden_mask)
        if image_embeddings is None:
            image_embeddings = self.image_embeddings(images)
        elif image_embeddings.shape[0] != len(images):
            raise ValueError(f"got {image_embeddings.shape[0]} image embeddings for {len(images)} images")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        input_sizes = [self.input_size(*size) for size in original_sizes]
        phrase_image = image_index.tolist()
        if not phrase_image:
            empty = image_embeddings.new_zeros((0, 4))
            frame = self.sam.prompt_encoder.mask_input_size
            return RefinerOutput([], image_embeddings.new_zeros((0, *frame)), empty[:, 0], empty)

        pairs = list(zip(coarse_logits, phrase_image, strict=True))
        mask_prompts = torch.stack([self.mask_prompt(x.float(), input_sizes[b]) for x, b in pairs])
        boxes = torch.stack([self.box_prompt(x.float(), original_sizes[b], input_sizes[b]) for x, b in pairs])
        box_tokens, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=mask_prompts[:, None])
        low_res, iou = self._decode_by_token_count(
            image_embeddings, image_index, box_tokens, dense, self.language_tokens(hidden), hidden_mask
        )
        masks: dict[int, torch.Tensor] = {}
        for b, (input_size, original_size) in enumerate(zip(input_sizes, original_sizes, strict=True)):
            group = [p for p, i in enumerate(phrase_image) if i == b]
            if group:
                upsampled = self.sam.postprocess_masks(low_res[group], input_size, original_size)
                masks.update(zip(group, upsampled[:, 0], strict=True))
        return RefinerOutput([masks[p] for p in range(len(phrase_image))], low_res[:, 0], iou[:, 0], boxes)

    def _decode_by_token_count(
        self,
        image_embeddings: torch.Tensor,
        image_index: torch.Tensor,
        box_tokens: torch.Tensor,
        dense: torch.Tensor,
        text_tokens: torch.Tensor,
        hidden_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One `decode_masks` call per distinct phrase-token count; results back in phrase order.

        Shapes: embeddings `(B, C, h, w)`, image_index `(P,)`, box_tokens `(P, 2, C)`, dense `(P, C, h, w)`,
        text_tokens `(P, T, C)`, hidden_mask `(P, T)` -> masks `(P, 1, 4h, 4w)`, iou `(P, 1)`.
        """
        device, dtype = image_embeddings.device, image_embeddings.dtype
        image_index, hidden_mask = image_index.to(device), hidden_mask.to(device, torch.bool)
        image_pe = self.sam.prompt_encoder.get_dense_pe().to(dtype)
        counts = hidden_mask.sum(dim=1).tolist()
        order, masks, iou = [], [], []
        for count in sorted(set(counts)):
            group = [p for p, c in enumerate(counts) if c == count]
            idx = torch.tensor(group, device=device)
            phrase_tokens = text_tokens[idx][hidden_mask[idx]].view(len(group), count, text_tokens.shape[-1])
            sparse = torch.cat([box_tokens[idx], phrase_tokens], dim=1).to(dtype)
            group_masks, group_iou = decode_masks(
                self.sam.mask_decoder,
                image_embeddings[image_index[idx]],
                image_pe,
                sparse,
                dense[idx].to(dtype),
            )
            order += group
            masks.append(group_masks)
            iou.append(group_iou)
        inverse = torch.argsort(torch.tensor(order, device=device))
        return torch.cat(masks)[inverse], torch.cat(iou)[inverse]
