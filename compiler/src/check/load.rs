//! Loads a spec file and its imports (the standard library is embedded).

use crate::diag::{codes, did_you_mean, Diagnostic, Diagnostics, FileId, SourceMap, Span};
use crate::syntax::ast::{AdapterDef, ImportTarget, Item};
use crate::syntax::parse_file;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/std_lib.rs"));

/// An adapter definition and where it came from.
#[derive(Clone, Debug)]
pub struct LoadedAdapter {
    /// The definition.
    pub def: AdapterDef,
    /// Defined in the main file (not imported).
    pub local: bool,
    /// Defined in the standard library.
    pub from_std: bool,
}

/// Everything loaded for one spec.
#[derive(Default)]
pub struct Loaded {
    /// Items of the main file.
    pub items: Vec<Item>,
    /// Adapters from the main file and every import.
    pub adapters: Vec<LoadedAdapter>,
}

struct Loader<'a> {
    map: &'a mut SourceMap,
    diags: &'a mut Diagnostics,
    stack: Vec<PathBuf>,
    done: Vec<PathBuf>,
    out: Loaded,
}

/// Virtual path of a standard-library module.
fn std_path(name: &str) -> PathBuf {
    PathBuf::from(format!("<std>/{name}.lora"))
}

/// Parses `file` (already in `map`) and everything it imports.
pub fn load(map: &mut SourceMap, diags: &mut Diagnostics, file: FileId) -> Loaded {
    let path = map.get(file).path.clone();
    let mut l = Loader {
        map,
        diags,
        stack: vec![path.clone()],
        done: vec![path],
        out: Loaded::default(),
    };
    let items = l.parse(file, true, false);
    l.out.items = items;
    l.out
}

impl Loader<'_> {
    fn parse(&mut self, file: FileId, main: bool, is_std: bool) -> Vec<Item> {
        let text = self.map.get(file).text.clone();
        let mut errs = Vec::new();
        let ast = parse_file(file, &text, &mut errs);
        for e in errs {
            self.diags.push(e);
        }
        let dir = self
            .map
            .get(file)
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for item in &ast.items {
            match item {
                Item::Import(i) => self.import(&i.target, i.target_span, &dir, is_std),
                Item::Adapter(a) => self.out.adapters.push(LoadedAdapter {
                    def: a.clone(),
                    local: main,
                    from_std: is_std,
                }),
                other if !main => {
                    let what = match other {
                        Item::Model(_) => "model",
                        Item::Attach(_) => "attach",
                        _ => "train",
                    };
                    self.diags.push(
                        Diagnostic::error(
                            codes::ITEM_NOT_ALLOWED,
                            format!("`{what}` in an imported file"),
                        )
                        .at(
                            other.span(),
                            "imported files hold only `import` and `adapter` items",
                        )
                        .help(format!(
                            "move this `{what}` into the spec that imports this file"
                        )),
                    );
                }
                _ => {}
            }
        }
        ast.items
    }

    fn import(&mut self, target: &ImportTarget, span: Span, dir: &Path, from_std: bool) {
        let (path, text, name, is_std) = match target {
            ImportTarget::Module(m) => {
                let Some(rest) = m.strip_prefix("std.") else {
                    self.diags.push(
                        Diagnostic::error(codes::IMPORT_NOT_FOUND, format!("unknown module `{m}`"))
                            .at(span, "only `std.…` modules are built in")
                            .help(format!(
                                "import a file with a string path: `import \"{}.lora\"`",
                                m.replace('.', "/")
                            )),
                    );
                    return;
                };
                let Some((_, src)) = STD.iter().find(|(n, _)| *n == rest) else {
                    let help = match did_you_mean(rest, STD.iter().map(|(n, _)| *n)) {
                        Some(c) => format!("did you mean `std.{c}`?"),
                        None => format!(
                            "the standard library has: {}",
                            STD.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    self.diags.push(
                        Diagnostic::error(
                            codes::IMPORT_NOT_FOUND,
                            format!("no standard module `{m}`"),
                        )
                        .at(span, "not in the standard library")
                        .help(help),
                    );
                    return;
                };
                (
                    std_path(rest),
                    src.to_string(),
                    format!("std/{rest}.lora"),
                    true,
                )
            }
            ImportTarget::Path(p) => {
                if from_std {
                    return;
                }
                let path = dir.join(p);
                let canon = path.canonicalize().unwrap_or(path.clone());
                match std::fs::read_to_string(&canon) {
                    Ok(t) => (canon, t, p.clone(), false),
                    Err(e) => {
                        self.diags.push(
                            Diagnostic::error(
                                codes::IMPORT_NOT_FOUND,
                                format!("cannot import `{p}`: {e}"),
                            )
                            .at(
                                span,
                                format!("resolved to {}", crate::diag::source::shown(&path)),
                            )
                            .help("import paths are relative to the importing file"),
                        );
                        return;
                    }
                }
            }
        };
        if self.stack.contains(&path) {
            self.diags.push(
                Diagnostic::error(
                    codes::IMPORT_CYCLE,
                    format!("`{name}` imports itself through a cycle"),
                )
                .at(span, "this import closes the cycle")
                .help("move the shared adapters into a third file that both import"),
            );
            return;
        }
        if self.done.contains(&path) {
            return;
        }
        self.done.push(path.clone());
        let id = self.map.add(name, path.clone(), text);
        self.stack.push(path);
        self.parse(id, false, is_std);
        self.stack.pop();
    }
}
