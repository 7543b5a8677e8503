//! Reads tauri.conf.json and the capabilities for `tauri::generate_context!`.

fn main() {
    tauri_build::build();
}
