"""The paper's object, as torch modules (floor 2: imports only dropout.py from the package).

- masks.py: every dropout mask a DropoutSpec asks for, drawn once per window or per step;
- lstm.py: DroppedLSTM, the recurrent core: cuDNN's fused kernel where the spec allows, the loop otherwise;
- loop.py: the step loop (a readable loop, and a fast one with a hand-written backward);
- triton_loop.py: the same loop's gate arithmetic as Triton kernels on CUDA;
- graphs.py: CUDA graphs of the loop's layers;
- language_model.py: embedding -> DroppedLSTM -> softmax;
- packed.py: M language models of one shape as one module (a leading member dimension on every weight).
"""
