"""compfn.rl: RL pieces as pure functions.

``losses`` (GRPO/DAPO token-mean etc., SFT NLL, KL, entropy), ``advantages`` (group advantages,
dynamic-sampling filter) and ``rollout`` (the fused sample -> detokenise -> score -> advantage
step: ``compfn.rl.rollout.rollout``). Import the submodules directly; this package imports
nothing eagerly.
"""
