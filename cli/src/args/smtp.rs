//! The `--smtp-*` flags of `instance create` and `instance update`: they
//! set the `smtp` object of an smtp instance (lbd validates the values,
//! with its codes).

/// The `smtp` object of an smtp instance (`--type smtp`); on update, given
/// flags replace the stored values.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SmtpArgs {
    /// Path each message is POSTed to on the backends [default: /messages].
    #[arg(long, value_name = "PATH")]
    pub smtp_deliver_path: Option<String>,
    /// Largest message in bytes; larger ones get 552 [default: 10485760].
    #[arg(long, value_name = "BYTES")]
    pub smtp_max_message_bytes: Option<u64>,
    /// RCPT TO accepted per message [default: 100].
    #[arg(long, value_name = "N")]
    pub smtp_max_recipients: Option<u32>,
    /// Seconds to wait for a command or message data [default: 300].
    #[arg(long, value_name = "S")]
    pub smtp_idle_timeout: Option<u32>,
    /// Longest command line in bytes, CRLF included [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub smtp_max_line_length: Option<u32>,
    /// Bad commands before the connection is closed [default: 10].
    #[arg(long, value_name = "N")]
    pub smtp_max_bad_commands: Option<u32>,
}
