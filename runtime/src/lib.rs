//! loraC runtime
