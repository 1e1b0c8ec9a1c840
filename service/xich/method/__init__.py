"""The paper's method as pure functions over arrays and tensors (no I/O, no database).

One module per step of section 3 of the XICH paper:
embedding (eq. 1) → clustering → mosaic (eq. 2) → gradcam (eq. 3–4) → dominance (eq. 5–8)
→ significance → hierarchy → distribution (Fig. 4/5).
"""
