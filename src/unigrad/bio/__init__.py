"""Biology: rate and spiking networks, reward-modulated learning rules, tasks.

Biological learning read as zeroth-order optimisation: the network's own noise probes, a global
reward-prediction-error signal reinforces, and local synapses combine the two (three-factor rules).

* :class:`~unigrad.bio.rate_rnn.RateRNN` — continuous-time rate RNN, ``τ dx/dt = −x + W_rec φ(x) + W_in u + b``
  (Euler), with optional intrinsic noise; ``run`` returns the whole :class:`~unigrad.bio.rate_rnn.Trajectory`.
* :class:`~unigrad.bio.lif.LIFNetwork` — recurrent leaky integrate-and-fire network with a leaky readout
  and a fast-sigmoid surrogate derivative, so backprop on it is BPTT; ``run`` returns a
  :class:`~unigrad.bio.lif.SpikeTrajectory`.

Both take inputs time first, ``(T, B, n_in)``, and return outputs ``(T, B, n_out)``.
"""

from unigrad.bio.lif import LIFNetwork
from unigrad.bio.rate_rnn import RateRNN

__all__ = ["LIFNetwork", "RateRNN"]
