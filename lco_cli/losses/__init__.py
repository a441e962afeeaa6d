"""Losses as pure functions of tensors: LCO (`lco`, `lco_chunked`), the policy-gradient and distillation
baselines (`policy_gradient`, `distillation`), their advantage estimators (`estimators`), masked
reductions (`reductions`), the shared loss base (`base`) and DPO (`dpo`)."""
