"""
Algorithm 1 and Algorithm 2: a critic at every step, then replay on fresh samples
=================================================================================

Algorithm 1 of Nitanda & Suzuki (2018) [NS18] fits a WGAN-GP critic at every outer step
and moves the particles along its gradient; the layers it stacks form a generator that
Algorithm 2 replays on fresh base samples. The toy experiment of the paper's section 7,
in a small version (the full one is ``flowkit reproduce toy``).
"""

from flowkit.experiments import toy
from flowkit.plotting import plot_metrics, plot_snapshots

cfg = toy.toy_config("8gaussians", quick=True, outer_steps=4, critic_steps=5,
                     baseline=False, monitor_every=2)
out = toy.run_toy(cfg)
print(toy.format_table(out["table"]))
fresh = out["algorithm2_fresh"]
print(f"Algorithm 2 on {fresh['n_fresh']} fresh samples: W2 {fresh['W2_all']:.4f}")

# %%
# The particles at a few outer steps (Figure 2 of the paper, small):

fig = plot_snapshots(out["_snapshots"], out["_data"], lim=1.0, step_label="outer step")

# %%
# W2 against critic steps:

rows = out["table"]
fig = plot_metrics({"Algorithm 1": ([r["critic_steps"] for r in rows],
                                    [r["alg1_W2"] for r in rows])},
                   xlabel="critic steps", ylabel="W$_2$ to the data (scaled units)",
                   references={"fresh data draw": out["reference_W2"]["W2_n"]})
