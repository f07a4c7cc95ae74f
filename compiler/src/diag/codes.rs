//! Stable diagnostic codes. Each has an explainer in `docs/errors/<code>.md`.

/// A stable diagnostic code such as `E0301`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub &'static str);

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

macro_rules! codes {
    ($($name:ident = $code:literal, $title:literal;)*) => {
        $(#[doc = $title] pub const $name: Code = Code($code);)*
        /// Every code with its one-line title, in code order.
        pub const ALL: &[(Code, &str)] = &[$(($name, $title)),*];
    };
}

codes! {
    SYNTAX = "E0001", "syntax error";
    UNCLOSED_DELIMITER = "E0002", "unclosed delimiter";
    UNTERMINATED_STRING = "E0003", "unterminated string";
    BAD_NUMBER = "E0004", "invalid number literal";
    UNEXPECTED_CLOSER = "E0005", "unexpected or mismatched closing delimiter";
    UNKNOWN_ITEM = "E0006", "unknown item keyword";
    UNKNOWN_NAME = "E0101", "unknown name";
    UNKNOWN_FUNCTION = "E0102", "unknown function";
    UNKNOWN_ADAPTER = "E0103", "unknown adapter";
    DUPLICATE_DEFINITION = "E0104", "duplicate definition";
    UNKNOWN_ARGUMENT = "E0105", "unknown argument";
    DUPLICATE_ARGUMENT = "E0106", "duplicate argument";
    MISSING_ARGUMENT = "E0107", "missing argument";
    BAD_EXPERT_INDEX = "E0108", "expert index used outside its experts block";
    IMPORT_NOT_FOUND = "E0109", "import not found";
    IMPORT_CYCLE = "E0110", "import cycle";
    ITEM_NOT_ALLOWED = "E0111", "item not allowed here";
    RESERVED_NAME = "E0112", "name shadows a built-in";
    TYPE_MISMATCH = "E0201", "type mismatch";
    INEXACT_DIVISION = "E0202", "integer division is not exact";
    NOT_CONSTANT = "E0203", "value is not a compile-time constant";
    ARITY = "E0204", "wrong number of arguments";
    BAD_OPTION = "E0205", "invalid option value";
    NON_POSITIVE_DIM = "E0206", "dimension must be positive";
    DIVISION_BY_ZERO = "E0207", "division by zero";
    UNKNOWN_TYPE = "E0208", "unknown parameter type";
    MATMUL_MISMATCH = "E0301", "matrix product dimensions do not match";
    BROADCAST_MISMATCH = "E0302", "shapes cannot be broadcast together";
    OUT_SHAPE = "E0303", "adapter output has the wrong shape";
    INIT_SHAPE = "E0304", "initializer shape does not match";
    RANK_TOO_LARGE = "E0305", "rank exceeds min(m, n)";
    TOPK_TOO_LARGE = "E0306", "top-k larger than the number of experts";
    AUX_NOT_SCALAR = "E0307", "auxiliary loss is not a scalar";
    SEGMENT_TOO_SHORT = "E0308", "SVD segment shorter than the expert rank";
    BAD_TRANSPOSE = "E0309", "transpose needs a matrix";
    BAD_INDEX = "E0310", "invalid index";
    MISSING_OUT = "E0401", "adapter has no `out`";
    DUPLICATE_OUT = "E0402", "adapter defines `out` twice";
    BAD_INIT_TARGET = "E0403", "`init` can only rewrite the frozen base weight";
    INIT_ARITY = "E0404", "initializer yields a different number of tensors";
    BAD_BASE_BINDING = "E0405", "base weight binding must name two dimensions";
    MISSING_INIT = "E0406", "parameter has no initializer";
    BAD_EXPERT_RANGE = "E0407", "invalid experts range";
    MODEL_NOT_FOUND = "E0501", "model files not found";
    UNKNOWN_FAMILY = "E0502", "unknown model family";
    BAD_CONFIG = "E0503", "invalid config.json";
    BAD_SAFETENSORS = "E0504", "corrupt safetensors file";
    NO_MODEL = "E0505", "no model declared";
    CONFIG_MISMATCH = "E0506", "config.json disagrees with the weights";
    DUPLICATE_MODEL = "E0507", "more than one model declared";
    NO_MATCH = "E0601", "attach pattern matches no module";
    NOT_LINEAR = "E0602", "attach pattern matches a tensor that is not a linear weight";
    ALLOCATION_LENGTH = "E0603", "allocation list length differs from the number of layers";
    BAD_ALLOCATION = "E0604", "invalid allocation rule";
    BAD_PATTERN = "E0605", "invalid module pattern";
    NO_LAYER = "E0606", "per-layer value used on a module outside any layer";
    UNKNOWN_SETTING = "E0701", "unknown train setting";
    UNKNOWN_CHOICE = "E0702", "unknown optimizer, schedule, task or metric";
    DATA_NOT_FOUND = "E0703", "data file not found";
    MISSING_SETTING = "E0704", "required train setting missing";
    BAD_VALUE = "E0705", "value out of range";
    UNKNOWN_SELECTOR = "E0706", "unknown parameter selector";
    CONFLICTING_SETTINGS = "E0707", "conflicting train settings";
    DUPLICATE_SETTING = "E0708", "train setting given twice";
    BAD_PAIRS = "E0709", "invalid preconditioner pairs";
    NO_OPTIMIZER = "E0710", "parameters without an optimizer";
    IO = "E0801", "cannot read file";
    TOKENIZER = "E0901", "tokenizer missing or invalid";
    WEIGHTS = "E0902", "model weights missing or unreadable";
    BAD_ADAPTER_DIR = "E0903", "adapter directory invalid";
    NO_SUCH_OUTPUT = "E0904", "requested output not available";
    BUILD_FAILED = "E0905", "graph construction or execution failed";
    BAD_DATA = "E0906", "invalid data file";
    NON_FINITE = "E0907", "training diverged (NaN or infinity)";
    CHECKPOINT = "E0908", "checkpoint missing or corrupt";
    BAD_MANIFEST = "E0909", "adapter manifest missing or invalid";
    NO_PEFT_FORMAT = "E0910", "adapter has no PEFT equivalent";
    NO_CUDA = "E0911", "CUDA backend unavailable";
    DATA_MODEL_MISMATCH = "E0912", "data does not fit the model";
    UNUSED_LET = "W0001", "unused binding";
    UNUSED_PARAMETER = "W0002", "unused adapter parameter";
    UNUSED_ADAPTER = "W0003", "adapter defined but never attached";
    OVERRIDDEN_ATTACH = "W0004", "attach rule fully overridden";
}

/// The title of a code, if it exists.
pub fn title(code: &str) -> Option<&'static str> {
    ALL.iter()
        .find(|(c, _)| c.0.eq_ignore_ascii_case(code))
        .map(|(_, t)| *t)
}

/// The explainer (markdown) of a code, from `docs/errors/`.
pub fn explain(code: &str) -> Option<&'static str> {
    crate::check::load::EXPLAIN
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map(|(_, t)| *t)
}
