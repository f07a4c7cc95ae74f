//! `loraC explain CODE`.

use lorac_compiler::diag::codes;

/// Prints the explainer of `code`, or the list of codes.
pub fn run(code: Option<&str>) -> i32 {
    match code {
        None => {
            for (c, title) in codes::ALL {
                super::out(&(format!("{c}  {title}") + "\n"));
            }
            0
        }
        Some(c) => match codes::explain(c) {
            Some(text) => {
                super::out(text);
                0
            }
            None => {
                eprintln!("error: no such code `{c}`; `loraC explain` lists them");
                2
            }
        },
    }
}
