"""plan_sparse_update: contribution analysis + evolutionary search under a memory budget."""

from __future__ import annotations

import numpy as np
import pytest

import tfmicro_train as tmt
from tfmicro_train import search
from tfmicro_train.demo import digits_data, pretrain, rotate, small_cnn


@pytest.fixture(scope="module")
def task():
    (xp, yp), (xd, yd), _ = digits_data()
    model = pretrain(small_cnn(), xp, yp, epochs=15)
    return model, xp, (rotate(xd[:200]), yd[:200]), (rotate(xd[300:]), yd[300:])


def test_plan_fits_budget_is_reproducible_and_cached(task, tmp_path, monkeypatch):
    model, xp, train, val = task
    kwargs = dict(memory_budget_kb=17, layers=[2, 3], ratios=(0.5, 1.0), bias_ks=[1, 3, 5],
                  cache_dir=str(tmp_path), verbose=False, return_plan=True, generations=10)
    plan = tmt.plan_sparse_update(model, train, val, **kwargs)
    print(f"\nplan {plan.update}: predicted gain {plan.score:.2f}, peak {plan.peak_sram_bytes} B, "
          f"{plan.evaluated} schemes measured; contributions {plan.contributions}")
    assert plan.peak_sram_bytes <= 17 * 1024
    assert plan.update.weight_ratios[4] == 1.0  # the classifier always trains
    art = tmt.convert(model, [xp[i:i + 1] for i in range(32)], update=plan.update)
    assert art.memory_report().peak_sram_bytes == plan.peak_sram_bytes
    # cached contributions: no fine-tuning run the second time, and the same answer
    calls = []
    monkeypatch.setattr(search, "_finetune", lambda *a, **k: calls.append(1) or 0.0)
    again = tmt.plan_sparse_update(model, train, val, **kwargs)
    assert calls == [] and again.update == plan.update


def test_budget_too_small_is_named(task, tmp_path):
    model, _, train, val = task
    with pytest.raises(ValueError, match="no sparse update fits memory_budget_kb=1 KB"):
        tmt.plan_sparse_update(model, train, val, memory_budget_kb=1, layers=[3], ratios=(1.0,),
                               bias_ks=[1], cache_dir=str(tmp_path), verbose=False, generations=2)


def test_contribution_analysis_rejects_bad_layer(task):
    model, _, train, val = task
    with pytest.raises(ValueError, match=r"candidate layer 9 is not a conv index in \[0, 5\)"):
        tmt.contribution_analysis(model, train, val, layers=[9], verbose=False)


def test_memory_model_matches_convert(task):
    model, xp, _, _ = task
    rep = [xp[i:i + 1] for i in range(16)]
    mm = search.MemoryModel(model, rep)
    update = tmt.SparseUpdate(bias_last_k=2, weight_ratios={3: 0.5})
    peak, flash = mm.measure(update)
    rep_conv = tmt.convert(model, rep, update=update).memory_report()
    assert peak == rep_conv.peak_sram_bytes
    assert abs(flash - rep_conv.flash_bytes) < 2048  # convert adds its metadata JSON
    assert np.isclose(peak, mm.measure(update)[0])
