//! The commands the window invokes: each one a call or two of qpq-sdk, and the forwarding of
//! the SDK's events to the window.

use std::path::PathBuf;

use qpq_sdk::{ConversationHandle, Progress, QpqClient, SdkError};
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, Emitter, State};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::error::CommandError;
use crate::settings::{Home, Settings};
use crate::view::{
    self, ConnectionView, ConversationView, DeviceView, EventView, MessageView, RequestView,
};

/// The channel SDK events reach the window on.
pub const EVENTS: &str = "qpq://event";
/// The channel transfer progress reaches the window on.
pub const PROGRESS: &str = "qpq://progress";
/// The most messages one `messages` call returns.
const PAGE_LIMIT: u32 = 500;
/// How often a transfer's progress reaches the window at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The window's state: where its files are, and the account open in it.
pub struct Desktop {
    home: Home,
    downloads: PathBuf,
    open: Mutex<Option<Open>>,
}

struct Open {
    client: QpqClient,
    me: Me,
    forwarder: tauri::async_runtime::JoinHandle<()>,
}

/// Who is signed in.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// The user name.
    user: String,
    /// This device's name.
    device: String,
    /// The server addresses.
    servers: Vec<String>,
}

impl Desktop {
    /// A window with no account open yet.
    pub fn new(home: Home, downloads: PathBuf) -> Self {
        Self {
            home,
            downloads,
            open: Mutex::new(None),
        }
    }

    /// Closes the open account, if any.
    pub async fn close(&self) {
        if let Some(open) = self.open.lock().await.take() {
            open.forwarder.abort();
            open.client.close().await;
        }
    }

    async fn client(&self) -> Result<QpqClient, CommandError> {
        self.open
            .lock()
            .await
            .as_ref()
            .map(|o| o.client.clone())
            .ok_or_else(CommandError::signed_out)
    }

    async fn conversation(&self, id: &str) -> Result<ConversationHandle, CommandError> {
        let id = view::conversation_id(id)?;
        Ok(self.client().await?.conversation(&id)?)
    }

    /// Opens the store of `settings`' account (closing any other) and starts forwarding its
    /// events; `start` then logs in or resumes.
    async fn open<F, Fut>(
        &self,
        app: &AppHandle,
        settings: &Settings,
        passphrase: &str,
        start: F,
    ) -> Result<Me, CommandError>
    where
        F: FnOnce(QpqClient) -> Fut,
        Fut: std::future::Future<Output = Result<(), SdkError>>,
    {
        self.close().await;
        let addrs = settings.addresses().await?;
        let (first, rest) = addrs
            .split_first()
            .ok_or_else(|| CommandError::invalid("no server address resolved"))?;
        let client = QpqClient::builder()
            .server(*first)
            .fallback_servers(rest.iter().copied())
            .pin(settings.pin()?)
            .data_dir(self.home.account_dir(&settings.user, &settings.pin()?)?)
            .passphrase(passphrase)
            .build()?;
        // Subscribed before the session starts; what the window still misses (it listens from
        // before it asks, but may fall behind) it reads from `security_warnings` and reloads.
        let forwarder = forward_events(app.clone(), &client);
        if let Err(err) = start(client.clone()).await {
            forwarder.abort();
            client.close().await;
            return Err(err.into());
        }
        let me = Me {
            user: settings.user.clone(),
            device: settings.device.clone(),
            servers: settings.servers.clone(),
        };
        *self.open.lock().await = Some(Open {
            client,
            me: me.clone(),
            forwarder,
        });
        Ok(me)
    }
}

fn forward_events(app: AppHandle, client: &QpqClient) -> tauri::async_runtime::JoinHandle<()> {
    let mut events = client.subscribe();
    tauri::async_runtime::spawn(async move {
        loop {
            let view = match events.recv().await {
                Ok(event) => EventView::new(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "the window fell behind the events; resync");
                    Some(EventView::Resync)
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if let Some(view) = view
                && let Err(err) = app.emit(EVENTS, view)
            {
                tracing::warn!(%err, "cannot forward an event to the window");
            }
        }
    })
}

fn list_entry(handle: &ConversationHandle) -> Result<ConversationView, CommandError> {
    let info = handle.info()?;
    let unread = handle.unread()?.len();
    let last = handle.messages(1)?;
    Ok(ConversationView::new(&info, unread, last.last()))
}

/// The settings remembered from the last sign-in, if any: the window then asks for the
/// passphrase only.
#[tauri::command]
pub async fn saved_settings(desktop: State<'_, Desktop>) -> Result<Option<Settings>, CommandError> {
    desktop.home.load()
}

/// What the first-run form sends.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignIn {
    settings: Settings,
    password: Zeroizing<String>,
    passphrase: Zeroizing<String>,
    /// Create the account first.
    register: bool,
    /// An invitation code, for a server that registers by invitation.
    invite: Option<String>,
}

/// Registers (if asked) and logs in, then remembers the settings.
#[tauri::command]
pub async fn sign_in(
    app: AppHandle,
    desktop: State<'_, Desktop>,
    request: SignIn,
) -> Result<Me, CommandError> {
    let settings = request.settings.checked()?;
    if request.password.is_empty() {
        return Err(CommandError::invalid("give the account's password"));
    }
    if request.passphrase.is_empty() {
        return Err(CommandError::invalid(
            "give a passphrase for this computer's encrypted store",
        ));
    }
    let (user, device) = (settings.user.clone(), settings.device.clone());
    let invite = request.invite.filter(|i| !i.trim().is_empty());
    let password = request.password;
    let me = desktop
        .open(&app, &settings, &request.passphrase, |client| async move {
            if request.register {
                client
                    .register_with_invite(&user, &password, invite.as_deref())
                    .await?;
            }
            client.login(&user, &device, &password).await
        })
        .await?;
    desktop.home.save(&settings)?;
    Ok(me)
}

/// Opens the remembered account with its store's passphrase and resumes its session.
#[tauri::command]
pub async fn unlock(
    app: AppHandle,
    desktop: State<'_, Desktop>,
    passphrase: Zeroizing<String>,
) -> Result<Me, CommandError> {
    let settings = desktop.home.load()?.ok_or_else(CommandError::signed_out)?;
    desktop
        .open(&app, &settings, &passphrase, |client| async move {
            client.connect().await
        })
        .await
}

/// Ends the session on the server; the store stays for the next sign-in.
#[tauri::command]
pub async fn sign_out(desktop: State<'_, Desktop>) -> Result<(), CommandError> {
    let client = desktop.client().await?;
    let ended = client.logout().await;
    desktop.close().await;
    Ok(ended?)
}

/// Who is signed in, the connection, and the waiting requests.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    me: Me,
    connection: ConnectionView,
    requests: u64,
    outbox: u64,
    /// The largest file an attachment may carry.
    max_attachment_bytes: u64,
}

/// The window's header: who, the connection, what waits.
#[tauri::command]
pub async fn overview(desktop: State<'_, Desktop>) -> Result<Overview, CommandError> {
    let guard = desktop.open.lock().await;
    let open = guard.as_ref().ok_or_else(CommandError::signed_out)?;
    Ok(Overview {
        me: open.me.clone(),
        connection: ConnectionView::from(&open.client.connection_state()),
        requests: open.client.request_count()?,
        outbox: open.client.outbox_len()?,
        max_attachment_bytes: qpq_sdk::ClientLimits::default().max_attachment_bytes,
    })
}

/// The key-transparency alarms and safety-number changes reported since the account was
/// opened: the window asks after opening it and after falling behind the events, so that it
/// shows every one even if it missed the event.
#[tauri::command]
pub async fn security_warnings(
    desktop: State<'_, Desktop>,
) -> Result<Vec<EventView>, CommandError> {
    let client = desktop.client().await?;
    Ok(client
        .security_warnings()
        .into_iter()
        .filter_map(EventView::new)
        .collect())
}

/// Every conversation with its unread count and newest message.
#[tauri::command]
pub async fn conversations(
    desktop: State<'_, Desktop>,
) -> Result<Vec<ConversationView>, CommandError> {
    let client = desktop.client().await?;
    // One conversation that cannot be read (left meanwhile, say) does not hide the others;
    // when none can be read, the store is what fails, and the window says so.
    let all = client.conversations()?;
    let mut entries = Vec::with_capacity(all.len());
    let mut first_error = None;
    for c in &all {
        match client
            .conversation(&c.id)
            .map_err(CommandError::from)
            .and_then(|h| list_entry(&h))
        {
            Ok(entry) => entries.push(entry),
            Err(err) => {
                tracing::warn!(%err, id = %c.id, "conversation left out of the list");
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) if entries.is_empty() => Err(err),
        _ => Ok(entries),
    }
}

/// One conversation's list entry, after an event about it: the window updates that entry
/// instead of reading the whole list again.
#[tauri::command]
pub async fn conversation(
    desktop: State<'_, Desktop>,
    conversation: String,
) -> Result<ConversationView, CommandError> {
    list_entry(&desktop.conversation(&conversation).await?)
}

/// The message requests waiting for an answer.
#[tauri::command]
pub async fn requests(desktop: State<'_, Desktop>) -> Result<Vec<RequestView>, CommandError> {
    let client = desktop.client().await?;
    Ok(client
        .requests()?
        .into_iter()
        .map(|(c, inviter)| RequestView {
            conversation: ConversationView::new(&c, 0, None),
            inviter,
        })
        .collect())
}

/// Accepts or declines a message request; accepting returns the conversation.
#[tauri::command]
pub async fn answer_request(
    desktop: State<'_, Desktop>,
    conversation: String,
    accept: bool,
) -> Result<Option<ConversationView>, CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    if accept {
        handle.accept().await?;
        Ok(Some(list_entry(&handle)?))
    } else {
        handle.decline().await?;
        Ok(None)
    }
}

/// A conversation's newest `limit` messages, or those just before `before`, oldest first.
#[tauri::command]
pub async fn messages(
    desktop: State<'_, Desktop>,
    conversation: String,
    before: Option<String>,
    limit: u32,
) -> Result<Vec<MessageView>, CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    let limit = limit.clamp(1, PAGE_LIMIT);
    let messages = match before {
        Some(before) => handle.messages_before(&view::message_id(&before)?, limit)?,
        None => handle.messages(limit)?,
    };
    Ok(messages.iter().map(MessageView::from).collect())
}

/// Sends a text, or a reply; returns the message as stored (queued).
#[tauri::command]
pub async fn send_text(
    desktop: State<'_, Desktop>,
    conversation: String,
    body: String,
    reply_to: Option<String>,
) -> Result<MessageView, CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    let reply_to = reply_to.as_deref().map(view::message_id).transpose()?;
    let sent = handle.send_text(&body, reply_to)?;
    Ok(MessageView::from(&handle.message(&sent.id())?))
}

/// Changes the text of one of this user's messages.
#[tauri::command]
pub async fn edit_message(
    desktop: State<'_, Desktop>,
    conversation: String,
    message: String,
    body: String,
) -> Result<(), CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    Ok(handle.edit(&view::message_id(&message)?, &body)?)
}

/// Withdraws one of this user's messages.
#[tauri::command]
pub async fn delete_message(
    desktop: State<'_, Desktop>,
    conversation: String,
    message: String,
) -> Result<(), CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    Ok(handle.delete(&view::message_id(&message)?)?)
}

/// Adds or removes a reaction.
#[tauri::command]
pub async fn react(
    desktop: State<'_, Desktop>,
    conversation: String,
    message: String,
    emoji: String,
    remove: bool,
) -> Result<(), CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    Ok(handle.react(&view::message_id(&message)?, &emoji, remove)?)
}

/// Marks everything unread in a conversation as read; returns how many.
#[tauri::command]
pub async fn mark_read(
    desktop: State<'_, Desktop>,
    conversation: String,
) -> Result<usize, CommandError> {
    Ok(desktop.conversation(&conversation).await?.mark_all_read()?)
}

/// Tells the members this user is typing.
#[tauri::command]
pub async fn typing(desktop: State<'_, Desktop>, conversation: String) -> Result<(), CommandError> {
    Ok(desktop.conversation(&conversation).await?.typing().await?)
}

/// How far a transfer is, on the `qpq://progress` channel.
#[derive(Clone, Serialize)]
struct ProgressView<'a> {
    transfer: &'a str,
    done: u64,
    total: u64,
}

/// Reports a transfer's progress to the window, at most every 50 ms (and always its end): a
/// server sending tiny chunks cannot flood the window with re-renders.
fn progress_to(app: &AppHandle, transfer: &str) -> impl FnMut(Progress) + Send {
    let (app, transfer) = (app.clone(), transfer.to_owned());
    let mut last: Option<std::time::Instant> = None;
    move |p: Progress| {
        let now = std::time::Instant::now();
        let due = last.is_none_or(|at| now.duration_since(at) >= PROGRESS_EVERY);
        if !due && p.done < p.total {
            return;
        }
        last = Some(now);
        let view = ProgressView {
            transfer: &transfer,
            done: p.done,
            total: p.total,
        };
        if let Err(err) = app.emit(PROGRESS, view) {
            tracing::debug!(%err, "cannot report progress to the window");
        }
    }
}

/// What comes with an attachment's bytes, in the `x-qpq-attachment` header (JSON).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AttachmentMeta {
    conversation: String,
    name: String,
    #[serde(default)]
    mime: String,
    #[serde(default)]
    caption: String,
    /// The window's name for this transfer, echoed in progress events.
    transfer: String,
}

/// Sends a file: the request's body is its bytes, the `x-qpq-attachment` header describes it.
/// Progress goes out on `qpq://progress`; returns the message as stored.
#[tauri::command]
pub async fn send_attachment(
    app: AppHandle,
    desktop: State<'_, Desktop>,
    request: tauri::ipc::Request<'_>,
) -> Result<MessageView, CommandError> {
    let tauri::ipc::InvokeBody::Raw(data) = request.body() else {
        return Err(CommandError::invalid(
            "the file's bytes are the request's body",
        ));
    };
    let meta: AttachmentMeta = request
        .headers()
        .get("x-qpq-attachment")
        .ok_or_else(|| CommandError::invalid("the x-qpq-attachment header is missing"))
        .and_then(|v| {
            serde_json::from_slice(v.as_bytes())
                .map_err(|e| CommandError::invalid(format!("x-qpq-attachment: {e}")))
        })?;
    let handle = desktop.conversation(&meta.conversation).await?;
    let sent = handle
        .send_attachment(
            &meta.name,
            &meta.mime,
            &meta.caption,
            data,
            progress_to(&app, &meta.transfer),
        )
        .await?;
    Ok(MessageView::from(&handle.message(&sent.id())?))
}

/// Downloads an attachment, checks it, and saves it in the downloads folder (never over an
/// existing file); returns the path. Progress goes out on `qpq://progress`.
#[tauri::command]
pub async fn download_attachment(
    app: AppHandle,
    desktop: State<'_, Desktop>,
    message: String,
    transfer: String,
) -> Result<String, CommandError> {
    let client = desktop.client().await?;
    // Created (0700) when missing; an existing folder is the user's and left as it is.
    if !desktop.downloads.is_dir() {
        crate::settings::private_dir(&desktop.downloads)?;
    }
    let path = client
        .save_attachment(
            &view::message_id(&message)?,
            &desktop.downloads,
            progress_to(&app, &transfer),
        )
        .await?;
    Ok(path.display().to_string())
}

/// Opens (or starts) the direct conversation with `user` (`name` or `name@domain`).
#[tauri::command]
pub async fn start_direct(
    desktop: State<'_, Desktop>,
    user: String,
) -> Result<ConversationView, CommandError> {
    let client = desktop.client().await?;
    let c = client.create_dm(user.trim()).await?;
    list_entry(&client.conversation(&c.id)?)
}

/// Creates a group with `members` (besides this user).
#[tauri::command]
pub async fn create_group(
    desktop: State<'_, Desktop>,
    name: String,
    members: Vec<String>,
) -> Result<ConversationView, CommandError> {
    let client = desktop.client().await?;
    let members: Vec<&str> = members
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .collect();
    let c = client.create_group(name.trim(), &members).await?;
    list_entry(&client.conversation(&c.id)?)
}

/// Invites `user` into a group.
#[tauri::command]
pub async fn invite(
    desktop: State<'_, Desktop>,
    conversation: String,
    user: String,
) -> Result<(), CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    Ok(handle.invite(user.trim()).await?)
}

/// Removes `user` from a group.
#[tauri::command]
pub async fn remove_member(
    desktop: State<'_, Desktop>,
    conversation: String,
    user: String,
) -> Result<(), CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    Ok(handle.remove(user.trim()).await?)
}

/// Leaves a group.
#[tauri::command]
pub async fn leave(desktop: State<'_, Desktop>, conversation: String) -> Result<(), CommandError> {
    Ok(desktop.conversation(&conversation).await?.leave().await?)
}

/// Renames a group.
#[tauri::command]
pub async fn rename(
    desktop: State<'_, Desktop>,
    conversation: String,
    name: String,
) -> Result<(), CommandError> {
    let handle = desktop.conversation(&conversation).await?;
    Ok(handle.rename(name.trim())?)
}

/// This user's devices.
#[tauri::command]
pub async fn devices(desktop: State<'_, Desktop>) -> Result<Vec<DeviceView>, CommandError> {
    let client = desktop.client().await?;
    Ok(client
        .devices()
        .await?
        .iter()
        .map(DeviceView::from)
        .collect())
}

/// A device's safety number with this user.
#[derive(Serialize)]
pub struct SafetyNumber {
    device: String,
    number: String,
}

/// The safety numbers with each of `user`'s devices, to compare out of band.
#[tauri::command]
pub async fn safety_numbers(
    desktop: State<'_, Desktop>,
    user: String,
) -> Result<Vec<SafetyNumber>, CommandError> {
    let client = desktop.client().await?;
    Ok(client
        .safety_numbers(user.trim())
        .await?
        .into_iter()
        .map(|(device, number)| SafetyNumber { device, number })
        .collect())
}
