"""Long-term keyframe memory of the self-guided attention head (docs/method.md#long-term-self-guided-attention)."""

import torch
from torch import Tensor


class LongTermMemory:
    """FIFO of at most ``num_keyframes`` entries, each the fc_0 features and reference-frame boxes of
    the first (best) P tubelets of a keyframe.

    Storage is fixed-size, the way an exported engine sees it: ``num_keyframes`` slots of P rows with a
    validity mask. A slot is invalid until written; an entry from a frame with fewer than P tubelets
    leaves the rest of its slot invalid. Slots are written round-robin, so a full memory overwrites its
    oldest entry.

    Args:
        num_keyframes: entries kept (``MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES``).
        keyframe_interval: a reference frame with in-video index t is a keyframe if
            t % ``keyframe_interval`` == 0 (``MODEL.SPATIOTEMPORAL.KEYFRAME_INTERVAL``).
        rows_per_entry: P (``MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.REF_POST_NMS_TOP_N``).
        feature_dim: d, the fc_0 output size.
        device, dtype: of the storage; entries are copied into it.
    """

    def __init__(
        self,
        num_keyframes: int,
        keyframe_interval: int,
        rows_per_entry: int,
        feature_dim: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_keyframes < 1 or keyframe_interval < 1 or rows_per_entry < 1:
            raise ValueError(
                "num_keyframes, keyframe_interval and rows_per_entry must be positive, got "
                f"{num_keyframes}, {keyframe_interval}, {rows_per_entry}"
            )
        self.num_keyframes = num_keyframes
        self.keyframe_interval = keyframe_interval
        self.rows_per_entry = rows_per_entry
        self.features = torch.zeros(num_keyframes, rows_per_entry, feature_dim, device=device, dtype=dtype)
        self.boxes = torch.zeros(num_keyframes, rows_per_entry, 4, device=device, dtype=dtype)
        self.valid = torch.zeros(num_keyframes, rows_per_entry, dtype=torch.bool, device=device)
        self.num_writes = 0

    def __len__(self) -> int:
        """Number of entries held."""
        return min(self.num_writes, self.num_keyframes)

    def reset(self) -> None:
        """Forget every entry (a new video starts)."""
        self.valid.zero_()
        self.num_writes = 0

    def is_keyframe(self, frame_index: int) -> bool:
        """Whether the reference frame with in-video index ``frame_index`` is a keyframe."""
        return frame_index % self.keyframe_interval == 0

    def update(self, frame_index: int, features: Tensor, boxes: Tensor) -> bool:
        """Append an entry if the reference frame just processed is a keyframe.

        Args:
            frame_index: in-video index of the reference frame.
            features: [p, d] fc_0 features of its first p <= P tubelets.
            boxes: [p, 4] their reference-frame boxes.
        Returns:
            True if the entry was written.
        """
        if not self.is_keyframe(frame_index):
            return False
        num_rows = features.shape[0]
        if num_rows > self.rows_per_entry or boxes.shape[0] != num_rows:
            raise ValueError(
                f"an entry holds at most {self.rows_per_entry} rows with one box each, "
                f"got {num_rows} features and {boxes.shape[0]} boxes"
            )
        slot = self.num_writes % self.num_keyframes
        self.features[slot, :num_rows] = features.detach()
        self.boxes[slot, :num_rows] = boxes.detach()
        self.valid[slot] = False
        self.valid[slot, :num_rows] = True
        self.num_writes += 1
        return True

    def references(self) -> tuple[Tensor, Tensor]:
        """The valid rows, oldest entry first.

        Returns:
            features [M', d] and boxes [M', 4], M' = the number of valid rows.
        """
        # Until the memory is full the oldest entry is in slot 0, then in the slot written next.
        oldest = self.num_writes % self.num_keyframes if len(self) == self.num_keyframes else 0
        valid = self.valid.roll(-oldest, dims=0)
        return self.features.roll(-oldest, dims=0)[valid], self.boxes.roll(-oldest, dims=0)[valid]

    def as_padded(self) -> tuple[Tensor, Tensor, Tensor]:
        """All slots as fixed-size tensors (views of the storage, in slot order).

        Returns:
            features [K*P, d], boxes [K*P, 4] and valid [K*P] bool, K = ``num_keyframes``.
        """
        return self.features.flatten(0, 1), self.boxes.flatten(0, 1), self.valid.flatten()
