//! Data files: malformed records, bad labels, missing fields and empty files are coded
//! diagnostics (E0906, E0703) that name the file and line; good records load.

use lorac_compiler::check::train::Task;
use lorac_runtime::data::{load, Label};
use std::path::PathBuf;

fn file(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn classes(n: usize) -> Task {
    Task::Classification {
        labels: n,
        pooling: "pooler".into(),
    }
}

fn lm() -> Task {
    Task::CausalLm {
        prompt: "prompt".into(),
        completion: "completion".into(),
        train_on_inputs: false,
        ignore_index: -100,
    }
}

/// The error's code and message for loading `text` as `name`.
fn error(name: &str, text: &str, task: &Task) -> (String, String) {
    let d = load(&file(name, text), "text", "label", task).expect_err(text);
    (d.code.0.to_string(), d.message.clone())
}

#[test]
fn good_records_load_in_both_formats() {
    let j = file(
        "ok.jsonl",
        "{\"text\": \"a\", \"label\": 1}\n\n{\"text\": \"b\", \"label\": \"0\"}\n",
    );
    let ex = load(&j, "text", "label", &classes(2)).unwrap();
    assert_eq!(ex.len(), 2, "blank lines are skipped");
    assert_eq!(ex[1].label, Label::Class(0));
    let c = file("ok.csv", "label,text\n1,\"hello, world\"\n0,bye\n");
    let ex = load(&c, "text", "label", &classes(2)).unwrap();
    assert_eq!(ex[0].text, "hello, world");
    let r = load(
        &file("r.jsonl", "{\"text\": \"a\", \"label\": -2.5}\n"),
        "text",
        "label",
        &Task::Regression,
    )
    .unwrap();
    assert_eq!(r[0].label, Label::Value(-2.5));
    let l = load(
        &file("lm.jsonl", "{\"prompt\": \"p\", \"completion\": \"c\"}\n"),
        "text",
        "label",
        &lm(),
    )
    .unwrap();
    assert_eq!(
        (l[0].text.as_str(), &l[0].label),
        ("p", &Label::Completion("c".into()))
    );
}

#[test]
fn bad_records_are_coded_errors_with_their_line() {
    let cases: Vec<(&str, &str, Task, &str)> = vec![
        (
            "bad_json.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"lab\n",
            classes(2),
            ":2: not valid JSON",
        ),
        (
            "no_text.jsonl",
            "{\"body\": \"a\", \"label\": 1}\n",
            classes(2),
            ":1: no string field `text`",
        ),
        (
            "no_label.jsonl",
            "{\"text\": \"a\"}\n",
            classes(2),
            ":1: no field `label`",
        ),
        (
            "label_range.jsonl",
            "{\"text\": \"a\", \"label\": 2}\n",
            classes(2),
            "not an integer in 0..2",
        ),
        (
            "label_neg.jsonl",
            "{\"text\": \"a\", \"label\": -1}\n",
            classes(2),
            "not an integer in 0..2",
        ),
        (
            "label_text.jsonl",
            "{\"text\": \"a\", \"label\": \"spam\"}\n",
            classes(2),
            "not an integer",
        ),
        (
            "reg_text.jsonl",
            "{\"text\": \"a\", \"label\": \"x\"}\n",
            Task::Regression,
            "not a number",
        ),
        (
            "lm_number.jsonl",
            "{\"prompt\": \"a\", \"completion\": 3}\n",
            lm(),
            "not a string",
        ),
        ("empty.jsonl", "\n\n", classes(2), "holds no examples"),
        (
            "no_column.csv",
            "label,body\n1,a\n",
            classes(2),
            "no column `text`",
        ),
        ("short_row.csv", "label,text\n1,a\n0\n", classes(2), ":3:"),
        (
            "csv_label.csv",
            "label,text\n7,a\n",
            classes(2),
            ":2: label",
        ),
    ];
    for (name, text, task, want) in cases {
        let (code, msg) = error(name, text, &task);
        assert_eq!(code, "E0906", "{name}: {msg}");
        assert!(
            msg.contains(name),
            "{name}: the message names the file: {msg}"
        );
        assert!(
            msg.contains(want),
            "{name}: `{msg}` should contain `{want}`"
        );
    }
    let d = load(
        &PathBuf::from("/nonexistent/train.jsonl"),
        "text",
        "label",
        &classes(2),
    )
    .unwrap_err();
    assert_eq!(d.code.0, "E0703");
}
