"""The tooling around minimp's core: nothing here is needed to train.

- :mod:`~minimp.tools.lessons`: what the lessons in ``notebooks/`` share (quick
  mode, saving and showing figures, executing the notebooks);
- :mod:`~minimp.tools.figures`: the longer figure recipes a lesson hands its runs to;
- :mod:`~minimp.tools.plots`: every figure, measured data in, a Figure out;
- :mod:`~minimp.tools.experiments`: the regimes trained side by side, the README tables;
- :mod:`~minimp.tools.bench` and :mod:`~minimp.tools.baselines`: step times against
  hand-written NumPy and PyTorch.

The core (the engine, the mixed-precision machinery, the models) never imports from here.
"""
