"""Crystal Graph Convolutional Neural Network (Xie & Grossman 2018; Court et al. 2020).

Atomic numbers -> one-hot element features (a fixed table, stored in the model) -> linear
embedding -> ``n_conv`` CGCNN convolutions -> mean pooling over the sites of each
crystal -> two dense layers -> one scalar per crystal.

Convolution (for centre i and neighbour j with edge features u_ij, z = v_i ‖ v_j ‖ u_ij):

    v_i <- softplus(v_i + BN(Σ_j w_ij σ(z W_f + b_f) ⊙ softplus(z W_s + b_s)))

with batch norm on the pre-activations of the edges (as in the original) and on the sum,
and w_ij the edge multiplicity weights of :mod:`matdisc.graphs`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from matdisc.graphs import CrystalGraph, GaussianExpansion


class CGConv(nn.Module):
    """One crystal-graph convolution; node features (n_nodes, A) -> (n_nodes, A).

    The linear map of the concatenation z = v_i ‖ v_j ‖ u_ij is applied as the sum of its
    three blocks (centre, neighbour, edge), so the node blocks are computed once per node
    rather than once per edge; the result is the same map.
    """

    def __init__(self, *, node_features: int, edge_features: int) -> None:
        super().__init__()
        self.center = nn.Linear(node_features, 2 * node_features)
        self.neighbor = nn.Linear(node_features, 2 * node_features, bias=False)
        self.edge = nn.Linear(edge_features, 2 * node_features, bias=False)
        self.bn_edge = nn.BatchNorm1d(2 * node_features)
        self.bn_node = nn.BatchNorm1d(node_features)

    def forward(self, v: torch.Tensor, edges: torch.Tensor, graph: CrystalGraph) -> torch.Tensor:
        """v (n_nodes, A); edges (n_edges, E) Gaussian-expanded distances."""
        z = self.edge(edges)
        z += self.center(v)[graph.edge_center]
        z += self.neighbor(v)[graph.edge_neighbor]
        gate, core = self.bn_edge(z).chunk(2, dim=1)
        message = torch.sigmoid(gate) * F.softplus(core) * graph.edge_weight[:, None]
        summed = torch.zeros_like(v).index_add_(0, graph.edge_center, message)
        return F.softplus(v + self.bn_node(summed))


class CGCNN(nn.Module):
    """Crystal graph -> one property per crystal, shape (n_graphs,).

    element_features: (max_z + 1, F) table of node features by atomic number.
    node_features: width A of the embedded node vectors; hidden_features: width of the
    first dense layer; n_conv: number of convolutions (the seed used 1); cutoff, gaussian
    step and width (Å) define the edge expansion.
    """

    def __init__(
        self,
        *,
        element_features: list[list[float]],
        node_features: int = 64,
        hidden_features: int = 128,
        n_conv: int = 1,
        cutoff: float = 8.0,
        gaussian_step: float = 0.2,
        gaussian_width: float = 0.2,
    ) -> None:
        super().__init__()
        table = torch.as_tensor(np.asarray(element_features, dtype=np.float32))
        self.model_args = dict(
            element_features=table.tolist(),
            node_features=node_features,
            hidden_features=hidden_features,
            n_conv=n_conv,
            cutoff=cutoff,
            gaussian_step=gaussian_step,
            gaussian_width=gaussian_width,
        )
        self.register_buffer("element_table", table)
        self.expansion = GaussianExpansion(cutoff=cutoff, step=gaussian_step, width=gaussian_width)
        self.embedding = nn.Linear(table.shape[1], node_features)
        self.convs = nn.ModuleList(
            CGConv(node_features=node_features, edge_features=self.expansion.size)
            for _ in range(n_conv)
        )
        self.hidden = nn.Linear(node_features, hidden_features)
        self.out = nn.Linear(hidden_features, 1)

    def crystal_features(self, graph: CrystalGraph) -> torch.Tensor:
        """Mean-pooled node features after the convolutions, (n_graphs, A)."""
        v = self.embedding(self.element_table[graph.numbers])
        edges = self.expansion(graph.edge_distance)
        for conv in self.convs:
            v = conv(v, edges, graph)
        pooled = torch.zeros(graph.n_graphs, v.shape[1], dtype=v.dtype, device=v.device)
        pooled.index_add_(0, graph.node_graph, v)
        counts = torch.bincount(graph.node_graph, minlength=graph.n_graphs).clamp(min=1)
        return pooled / counts[:, None].to(v.dtype)

    def forward(self, graph: CrystalGraph) -> torch.Tensor:
        h = F.softplus(self.hidden(F.softplus(self.crystal_features(graph))))
        return self.out(h).squeeze(1)

    #: parameters shared by transfer learning (the feature extractor, not the head)
    TRANSFER_PREFIXES = ("embedding.", "convs.")

    def load_feature_extractor(self, source: CGCNN) -> list[str]:
        """Copy the embedding and convolution weights of ``source``; returns the keys copied.

        Used to fine-tune a property model from the formation-energy model (the seed's
        transfer learning). The dense head keeps its fresh initialisation.
        """
        src = source.state_dict()
        own = self.state_dict()
        keys = [k for k in own if k.startswith(self.TRANSFER_PREFIXES)]
        for key in keys:
            if key not in src or src[key].shape != own[key].shape:
                raise ValueError(
                    f"cannot transfer {key}: the source model has a different architecture"
                )
            own[key] = src[key].clone()
        self.load_state_dict(own)
        return keys
