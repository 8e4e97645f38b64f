"""Exemplar Partitioning (EP) dictionaries as MIB causal-variable featurizers.

Written by `exemplar mib-export`. A dictionary has a center mu [d] and unit exemplars E [K, d]
(directions of the centered space); with x~ = x - mu and s = x~ E^T (the projections):

* hard (`top_n` = 1): features = s_k at the nearest exemplar k = argmax s, 0 elsewhere;
* soft (`top_n` = n > 1): features = the least-squares coefficients of x~ on the n exemplars of
  largest projection, 0 elsewhere;
* error = x - (mu + features E), so the inverse mu + features E + error gives x back.

The inverse is linear in the features, so an interchange of region k between base and source
adds (f_source[k] - f_base[k]) E_k to the base.
"""

import torch

try:
    from CausalAbstraction.neural.featurizers import Featurizer
except ImportError:  # outside MIB's environment: the same interface, for standalone use
    try:
        from CausalAbstraction.model_units.model_units import Featurizer
    except ImportError:
        Featurizer = None


class EPFeaturizerModule(torch.nn.Module):
    def __init__(self, center, exemplars, top_n=1):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("exemplars", torch.as_tensor(exemplars, dtype=torch.float32))
        self.top_n = int(top_n)

    def forward(self, x):
        shape = x.shape
        e = self.exemplars.to(torch.float32)
        xc = x.reshape(-1, shape[-1]).to(torch.float32) - self.center
        s = xc @ e.T
        f = torch.zeros_like(s)
        if self.top_n == 1:
            k = s.argmax(dim=-1, keepdim=True)
            f.scatter_(-1, k, s.gather(-1, k))
        else:
            k = s.topk(self.top_n, dim=-1).indices
            es = e[k]  # [B, n, d]
            c = torch.linalg.lstsq(es.transpose(1, 2).double(), xc.unsqueeze(-1).double()).solution
            f.scatter_(-1, k, c.squeeze(-1).to(f.dtype))
        f = f.reshape(*shape[:-1], -1)
        error = x - (self.center + f @ e).to(x.dtype)
        return f.to(x.dtype), error


class EPInverseFeaturizerModule(torch.nn.Module):
    def __init__(self, center, exemplars):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("exemplars", torch.as_tensor(exemplars, dtype=torch.float32))

    def forward(self, f, error):
        x = self.center + f.to(torch.float32) @ self.exemplars
        return x.to(error.dtype) + error


if Featurizer is not None:

    class EPFeaturizer(Featurizer):
        def __init__(self, center, exemplars, top_n=1, id="ep"):
            super().__init__(
                EPFeaturizerModule(center, exemplars, top_n),
                EPInverseFeaturizerModule(center, exemplars),
                n_features=len(exemplars),
                id=id,
            )


def load(path):
    """The (featurizer, inverse featurizer) modules of a unit: `path` without the
    `_featurizer` / `_inverse_featurizer` suffix."""
    fz = torch.load(path + "_featurizer", weights_only=True)
    inv = torch.load(path + "_inverse_featurizer", weights_only=True)
    cfg = fz["model_info"]["additional_config"]
    sd, isd = fz["state_dict"], inv["state_dict"]
    f = EPFeaturizerModule(sd["center"], sd["exemplars"], cfg["top_n"])
    i = EPInverseFeaturizerModule(isd["center"], isd["exemplars"])
    return f, i
