"""What tests share to run semcorr: one tiny random ViT, the tokens of a quiet run without
figures, and a small synthetic dataset. Tests about figures or logging ask for them explicitly
(later tokens win)."""

TINY_VIT = ["backbone=dinov2_vits14", "backbone.weights=none",
            "backbone.model_kwargs={depth: 2, embed_dim: 48, num_heads: 2}"]
# no W&B, no progress bar, no figures (a third of an evaluation's time), on the CPU
QUIET = ["logger.wandb=false", "trainer.enable_progress_bar=false", "plots.n_pairs=0",
         "plots.category_curves=false", "trainer.accelerator=cpu"]
SMALL_DATA = ["data=synthetic", "data.image_size=56", "data.batch_size=2", "data.n_pairs.train=8",
              "data.n_pairs.val=4", "data.n_keypoints=8"]
