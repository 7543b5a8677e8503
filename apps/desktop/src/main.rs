//! quicproquo for the desktop: a Tauri 2 window over qpq-sdk.
//!
//! The Rust side is a thin set of commands over [`qpq_sdk::QpqClient`] (every message shown or
//! sent goes through the SDK) and a task that forwards the SDK's events to the window on the
//! `qpq://event` channel. The UI is in `ui/` (TypeScript, built with vite). docs/desktop.md
//! tells how to run and test it.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod commands;
mod error;
mod settings;
mod view;

use tauri::Manager;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QPQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    // A build without the custom-protocol feature loads its UI from the vite dev server on
    // localhost:5173, which any local program could be listening on instead; such a build
    // runs only when asked for (`npm run app:dev` asks).
    if tauri::is_dev() && std::env::var_os("QPQ_DESKTOP_DEV").is_none() {
        eprintln!(
            "qpq-desktop: this is a development build (its UI comes from http://localhost:5173); \
             build with --features custom-protocol, or set QPQ_DESKTOP_DEV=1 to run it"
        );
        std::process::exit(2);
    }
    let app = tauri::Builder::default()
        .setup(|app| {
            let paths = app.path();
            let home = settings::Home::new(paths.app_config_dir()?, paths.app_data_dir()?);
            // Never the home folder itself: a received file must not land beside dotfiles.
            let downloads = paths
                .download_dir()
                .or_else(|_| paths.home_dir().map(|home| home.join("Downloads")))?;
            app.manage(commands::Desktop::new(home, downloads));
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            commands::saved_settings,
            commands::sign_in,
            commands::unlock,
            commands::sign_out,
            commands::overview,
            commands::security_warnings,
            commands::conversations,
            commands::conversation,
            commands::requests,
            commands::answer_request,
            commands::messages,
            commands::send_text,
            commands::edit_message,
            commands::delete_message,
            commands::react,
            commands::mark_read,
            commands::typing,
            commands::send_attachment,
            commands::download_attachment,
            commands::start_direct,
            commands::create_group,
            commands::invite,
            commands::remove_member,
            commands::leave,
            commands::rename,
            commands::devices,
            commands::safety_numbers,
        ])
        .build(tauri::generate_context!());
    let app = match app {
        Ok(app) => app,
        Err(err) => {
            eprintln!("qpq-desktop: cannot start: {err}");
            std::process::exit(1);
        }
    };
    app.run(|handle, event| {
        if let tauri::RunEvent::Exit = event {
            // The outbox and the receive cursor are in the store already; closing stops the
            // background tasks and releases the data directory's lock.
            let desktop = handle.state::<commands::Desktop>();
            tauri::async_runtime::block_on(desktop.close());
        }
    });
}
