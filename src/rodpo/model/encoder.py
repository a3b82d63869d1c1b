"""RoDPOModel: the multimodal sequential encoder of paper §3.2 (Fig. 2a) and its item scores (Eq. 3).

Per position l of a right-padded sequence (item id i_l, timestamp t_l):
  e^id_l = Emb(i_l),  e^txt_l = W_txt v^txt_{i_l},  e^img_l = W_img v^img_{i_l}
  (an item whose image is missing uses a learned `missing_image` vector instead of W_img v^img),
  -> residual sparse noisy MoE refinement, one set of experts shared by all modalities (moe.py)
  -> + absolute positional embedding (per modality), + temporal experts (temporal.py, shared)
  -> LayerNorm, dropout, a causal post-LN Transformer per modality (SASRec/RecBole layout).
Scores (Eq. 3): s(x, i) = h_id . E_id[i] + a_txt h_txt . (W_txt v^txt_i) + a_img h_img . (W_img v^img_i),
with learnable scalars a_m; an item without an image gets no image score (its image row is 0).

States of all modalities travel as one tensor (..., M*d) with blocks in `config.modalities` order;
`scoring_table()` stacks the matching item tables (I+1, M*d) with the a_m folded in, so scoring all
items is a single matmul. Column 0 (padding) of every full score row is -inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rodpo.model.config import ModelConfig
from rodpo.model.moe import ItemRefinement
from rodpo.model.temporal import TemporalExperts
from rodpo.sequences import trim_to_longest

FEATURE_MODALITIES = ("text", "image")


def attention_mask(is_real: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B, 1, L, L) bool, True = may attend: causal, real keys only, and always itself.

    Allowing the diagonal means no query row is ever fully masked (an all-padding row would
    otherwise softmax over nothing and give NaN); real queries attend to real keys only.
    """
    length = is_real.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=is_real.device).tril()
    itself = torch.eye(length, dtype=torch.bool, device=is_real.device)
    return (causal & (is_real[:, None, None, :] | itself)).contiguous()


class SelfAttention(nn.Module):
    """Multi-head self-attention sublayer with residual and post-LayerNorm (RecBole's MultiHeadAttention)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attn_dropout = nn.Dropout(config.attn_dropout)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_dropout = nn.Dropout(config.hidden_dropout)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        q, k, v = self.qkv(hidden).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        # The nn.Dropout module carries the train/eval switch, so toggling dropout modules covers attention.
        dropout_p = self.attn_dropout.p if self.attn_dropout.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(batch, length, width)
        return self.norm(hidden + self.out_dropout(self.out(context)))


class FeedForward(nn.Module):
    """Position-wise FFN sublayer d -> inner -> d (GELU) with residual and post-LayerNorm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.inner_size)
        self.fc_out = nn.Linear(config.inner_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden + self.dropout(self.fc_out(F.gelu(self.fc_in(hidden)))))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(hidden, mask))


class ModalityEncoder(nn.Module):
    """Positional embedding, LayerNorm, dropout and causal Transformer of one modality."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.position_embedding = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, temporal: TemporalExperts | None,
                time_embedding: torch.Tensor | None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = tokens + self.position_embedding(positions)
        if temporal is not None:
            hidden = temporal(hidden, time_embedding)
        hidden = self.dropout(self.norm(hidden))
        for block in self.blocks:
            hidden = block(hidden, mask)
        return hidden


class RoDPOModel(nn.Module):
    """Multimodal sequential recommender; see the module docstring for the exact computation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.modalities = config.modalities
        # Only the modalities in the config get parameters: no ID table in a text-only model, no
        # image projection, weight or missing-image vector without images (no dead branch).
        self.item_embedding = nn.Embedding(config.n_items + 1, d, padding_idx=0) if "id" in self.modalities else None
        feature_dims = {"text": config.text_dim, "image": config.image_dim}
        self.projections = nn.ModuleDict(
            {m: nn.Linear(feature_dims[m], d, bias=False) for m in FEATURE_MODALITIES if m in self.modalities}
        )
        self.modality_weights = nn.ParameterDict(
            {m: nn.Parameter(torch.ones(())) for m in FEATURE_MODALITIES if m in self.modalities}
        )
        self.missing_image = nn.Parameter(torch.zeros(d)) if "image" in self.modalities else None
        self.refinement = ItemRefinement(config.moe_mode, d, config.inner_size, config.n_experts,
                                         config.moe_top_k, config.moe_noise_std)
        self.temporal = (
            TemporalExperts(d, config.n_temporal_experts, config.n_gap_buckets, config.n_time_buckets,
                            config.time_min, config.time_max)
            if config.temporal else None
        )
        self.encoders = nn.ModuleDict({m: ModalityEncoder(config) for m in self.modalities})
        # Frozen item features: non-persistent, so checkpoints hold only trained weights.
        self.register_buffer("text_features", None, persistent=False)
        self.register_buffer("image_features", None, persistent=False)
        self.register_buffer("image_mask", None, persistent=False)
        self.apply(self._init_weights)
        if self.missing_image is not None:
            nn.init.normal_(self.missing_image, std=config.init_std)
        if config.moe_mode == "sparse":
            self.refinement.block.reset_router()

    @classmethod
    def from_config(cls, values: dict) -> "RoDPOModel":
        """Rebuild an untrained model from a saved config dict (see rodpo.datasets.TorchModelDataset)."""
        return cls(ModelConfig.from_dict(values))

    def _init_weights(self, module: nn.Module) -> None:
        """RecBole's SASRec init: N(0, init_std) for Linear/Embedding, LayerNorm = identity."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ features
    def set_item_features(self, text=None, image=None, image_mask=None) -> None:
        """Attach frozen item features (row i = item i, row 0 = padding) as non-persistent buffers.

        Arrays or tensors; `image_mask` (I+1,) bool, False = no usable image (defaults to all True
        except row 0). Features of modalities the config does not use are ignored.
        """
        device = next(self.parameters()).device
        n_rows = self.config.n_items + 1
        for name, values, dim in (("text", text, self.config.text_dim), ("image", image, self.config.image_dim)):
            if name not in self.modalities:
                continue
            if values is None:
                raise ValueError(f"set_item_features: modality '{name}' is enabled but no {name} features given.")
            tensor = torch.as_tensor(values, dtype=torch.float32).to(device)
            if tuple(tensor.shape) != (n_rows, dim):
                raise ValueError(
                    f"set_item_features: {name} features have shape {tuple(tensor.shape)}, expected "
                    f"({n_rows}, {dim}) = (n_items + 1, {name}_dim) with row 0 for padding."
                )
            setattr(self, f"{name}_features", tensor)
        if "image" in self.modalities:
            if image_mask is None:
                mask = torch.ones(n_rows, dtype=torch.bool, device=device)
            else:
                mask = torch.as_tensor(image_mask, dtype=torch.bool).to(device)
                if tuple(mask.shape) != (n_rows,):
                    raise ValueError(f"set_item_features: image_mask has shape {tuple(mask.shape)}, expected ({n_rows},).")
            mask = mask.clone()
            mask[0] = False
            self.image_mask = mask

    def _feature_table(self, modality: str) -> torch.Tensor:
        """W_m v^m for all items (I+1, d)."""
        features = getattr(self, f"{modality}_features")
        if features is None:
            raise RuntimeError(
                f"RoDPOModel: modality '{modality}' has no features; call model.set_item_features(...) "
                f"after building or loading the model."
            )
        return self.projections[modality](features)

    # ------------------------------------------------------------------ encoder
    def _input_tokens(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (M, B, L, d) per-modality input embeddings."""
        tokens = []
        for modality in self.modalities:
            if modality == "id":
                tokens.append(self.item_embedding(item_ids))
            elif modality == "text":
                tokens.append(F.embedding(item_ids, self._feature_table("text")))
            else:  # image: a learned vector where the image is missing, zero at padding
                projected = F.embedding(item_ids, self._feature_table("image"))
                has_image = self.image_mask[item_ids].unsqueeze(-1)
                missing = (item_ids > 0).unsqueeze(-1) & ~has_image
                tokens.append(torch.where(has_image, projected, missing * self.missing_image))
        return torch.stack(tokens)

    def encode(self, item_ids: torch.Tensor, timestamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, L) item ids (0 = padding) and unix-second timestamps ->
        states (B, L, M*d) (position l sees items <= l only) and the MoE load-balancing loss (scalar)."""
        if item_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"encode: sequence length {item_ids.shape[1]} exceeds max_seq_len={self.config.max_seq_len}; "
                f"keep the most recent items (rodpo.sequences does)."
            )
        is_real = item_ids > 0
        tokens = self._input_tokens(item_ids)  # (M, B, L, d)
        tokens, aux_loss = self.refinement(tokens, is_real.expand(len(self.modalities), -1, -1))
        time_embedding = self.temporal.time_embedding_of(timestamps, is_real) if self.temporal is not None else None
        mask = attention_mask(is_real)
        states = [
            self.encoders[modality](tokens[index], mask, self.temporal, time_embedding)
            for index, modality in enumerate(self.modalities)
        ]
        return torch.cat(states, dim=-1), aux_loss

    # ------------------------------------------------------------------ scores
    def scoring_table(self) -> torch.Tensor:
        """(I+1, M*d): per-modality item tables side by side, the fusion weights a_m folded in (Eq. 3)."""
        tables = []
        for modality in self.modalities:
            if modality == "id":
                tables.append(self.item_embedding.weight)
            elif modality == "text":
                tables.append(self.modality_weights["text"] * self._feature_table("text"))
            else:  # items without an image contribute no image score
                table = self._feature_table("image") * self.image_mask.unsqueeze(-1)
                tables.append(self.modality_weights["image"] * table)
        return tables[0] if len(tables) == 1 else torch.cat(tables, dim=-1)  # one modality: no table copy

    def all_item_logits(self, states: torch.Tensor) -> torch.Tensor:
        """states (N, M*d) -> s(x, i) for every item (N, I+1); column 0 = -inf (padding never wins)."""
        logits = states @ self.scoring_table().T
        return logits.index_fill(-1, torch.zeros(1, dtype=torch.long, device=logits.device), float("-inf"))

    def item_logits(self, states: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """states (N, M*d), item_idx (N, m) -> s(x, i) for just those items (N, m), no full logits."""
        candidates = F.embedding(item_idx, self.scoring_table())  # (N, m, M*d)
        return torch.einsum("nd,nmd->nm", states, candidates.to(states.dtype))

    def last_states(self, item_ids: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """States after the last real position of each right-padded history (B, M*d): what the
        scoring core ranks the catalog against (rodpo.scoring)."""
        states, _ = self.encode(item_ids, timestamps)
        last = ((item_ids > 0).sum(dim=1) - 1).clamp(min=0)
        return states[torch.arange(states.shape[0], device=states.device), last]

    def score_next(self, item_ids: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Dense next-item scores (B, I+1): the reference the chunked scoring core is tested against."""
        return self.all_item_logits(self.last_states(item_ids, timestamps))


def encode_targets(model: nn.Module, inputs: torch.Tensor, input_times: torch.Tensor, is_target: torch.Tensor,
                   encoder_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States at the target positions (N, M*d), in row-major order of a length-sorted batch.

    The rows are encoded in `encoder_chunks` contiguous groups, each cut to its own longest
    sequence: the same result as one padded call (attention is causal and masks padding), with far
    fewer padding positions. The MoE aux loss is averaged over the groups.
    """
    states, aux_losses = [], []
    for rows in torch.arange(inputs.shape[0], device=inputs.device).chunk(encoder_chunks):
        chunk_targets, chunk_inputs, chunk_times = trim_to_longest(is_target[rows], inputs[rows], input_times[rows])
        chunk_states, aux_loss = model.encode(chunk_inputs, chunk_times)
        states.append(chunk_states[chunk_targets])
        aux_losses.append(aux_loss)
    return torch.cat(states), torch.stack(aux_losses).mean()
