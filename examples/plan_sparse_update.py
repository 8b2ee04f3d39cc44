"""Choose a sparse update under an SRAM budget (contribution analysis + evolutionary search).

    python examples/plan_sparse_update.py
"""

import tfmicro_train as tmt
from tfmicro_train.demo import digits_data, pretrain, rotate, small_cnn

(x_pre, y_pre), (x_dev, y_dev), (x_test, y_test) = digits_data()
model = pretrain(small_cnn(), x_pre, y_pre)
train = (rotate(x_dev[:300]), y_dev[:300])
val = (rotate(x_dev[300:]), y_dev[300:])
plan = tmt.plan_sparse_update(model, train, val, memory_budget_kb=18, cache_dir=".tmt_cache",
                              return_plan=True)
print(plan.update, f"predicted gain {plan.score:+.2f}, peak {plan.peak_sram_bytes / 1024:.1f} KB")
art = tmt.convert(model, [x_pre[i:i + 1] for i in range(64)], update=plan.update)
print(art.memory_report())
