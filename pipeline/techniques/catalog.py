"""The techniques the pipeline knows, declared without torch: name, defaults, each hyperparameter's type.

The order here is the display order.  The torch code of each lives in
``pipeline/run/techniques/<impl>.py`` (see there for what each hyperparameter
does); a test checks that every declared default equals the one the torch side
uses, and that every peft-backed hyperparameter is a field of its peft config.

Changing a default changes the run id of every run that does not set it.
"""

from __future__ import annotations

from .base import Param, Technique

# transformers.activations names (tests/test_architecture.py checks they all exist)
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "silu", "swish",
               "tanh", "sigmoid", "leaky_relu", "mish", "relu6", "linear")
PLACEMENTS = ("pfeiffer", "houlsby")  # pfeiffer: after the feed-forward sublayer; houlsby: after attention too

LORA = Technique(
    name="lora",
    impl="lora",
    params={
        "r": Param("int", 8, min=1),
        "lora_alpha": Param("float", 16, above=0),
        "lora_dropout": Param("float", 0.0, min=0, below=1),
        "target_modules": Param("names", None, nullable=True),  # None: peft's default for the architecture
        "bias": Param("str", choices=("none", "all", "lora_only")),
        "use_rslora": Param("bool"),
        "use_dora": Param("bool"),
        "fan_in_fan_out": Param("bool"),
    },
    lr=3e-3,
    description="low-rank update of attention projections (peft LoraConfig)",
    paper=True,
)

PREFIX = Technique(
    name="prefix",
    impl="prefix",
    params={
        "num_virtual_tokens": Param("int", 10, min=1),
        "prefix_projection": Param("bool", False),
        "encoder_hidden_size": Param("int", min=1),
        "init_text": Param("str"),  # causal-lm: start from the host's own key/values of this text (run/techniques/prefix.py)
    },
    lr=1e-2,
    description="trainable key/value prefixes in every layer (peft PrefixTuningConfig)",
    paper=True,
)

PROMPT = Technique(
    name="prompt",
    impl="prompt",
    params={
        "num_virtual_tokens": Param("int", 10, min=1),
        "prompt_tuning_init": Param("str", choices=("RANDOM", "SAMPLE_VOCAB")),
    },
    lr=3e-2,
    description="trainable soft-prompt embeddings prepended to the input (peft PromptTuningConfig)",
)

IA3 = Technique(
    name="ia3",
    impl="ia3",
    params={
        "target_modules": Param("names", nullable=True),
        "feedforward_modules": Param("names", nullable=True),
        "init_ia3_weights": Param("bool"),
    },
    lr=1e-2,
    description="learned rescaling of keys, values and feed-forward activations (peft IA3Config)",
)

BOTTLENECK = Technique(
    name="bottleneck",
    impl="adapter",
    params={
        "reduction_factor": Param("float", 16, above=0),  # bottleneck width = hidden // reduction_factor
        "placement": Param("str", "pfeiffer", choices=PLACEMENTS),
        "non_linearity": Param("str", "relu", choices=ACTIVATIONS),
    },
    lr=1e-3,
    description=(
        "Bottleneck adapter (Houlsby et al. 2019 / Pfeiffer et al. 2021): residual "
        "down-projection, non-linearity, up-projection after the feed-forward sublayer "
        "('pfeiffer') or after attention and feed-forward ('houlsby'); up-projection "
        "zero-initialised so the host starts unchanged."
    ),
    paper=True,
)

COMPACTER = Technique(
    name="compacter",
    impl="compacter",
    params={
        "reduction_factor": Param("float", 32, above=0),
        "placement": Param("str", "pfeiffer", choices=PLACEMENTS),  # pfeiffer = Compacter++, houlsby = Compacter
        "non_linearity": Param("str", "gelu", choices=ACTIVATIONS),
        "phm_dim": Param("int", 4, min=1),  # n: Kronecker summands; must divide hidden and bottleneck widths
        "phm_rank": Param("int", 1, min=1),  # r: rank of each B_i
    },
    lr=3e-3,
    description=(
        "Compacter (Mahabadi et al. 2021): bottleneck adapter with PHM projections "
        "W = sum_i A_i (x) s_i t_i^T, A_i shared across all layers; default placement "
        "after the feed-forward sublayer (Compacter++)."
    ),
    paper=True,
)

ALL = (LORA, PREFIX, PROMPT, IA3, BOTTLENECK, COMPACTER)
