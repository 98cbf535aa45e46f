//! `switchyard token`: the operator's side of control credentials. `keygen` writes an Ed25519
//! key pair (the private half signs, the public half goes into every gateway's
//! `control.jwt_keys_file`); `issue` signs a credential for some services.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use switchyard::auth::{self, AUDIENCE, Claims, SigningKey};
use switchyard::seams::{Clock as _, SystemClock};

mod revoke;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Write a new Ed25519 key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.pem.
    Keygen {
        /// Path prefix of the two files; neither may exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a credential and print it (one line, for `authorization: Bearer <token>`).
    Issue(IssueArgs),
    /// Revoke a public token id or subject on every gateway (through one gateway's control
    /// listener and Redis); prints the gateway's answer.
    Revoke(revoke::RevokeArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The private key that signs (PKCS#8 PEM: Ed25519, P-256 or RSA).
    #[arg(long)]
    key: PathBuf,
    /// Services the credential may register, renew and deregister, comma-separated: names,
    /// prefixes ending in `*` (`billing-*`), or `*` for all. Empty: none.
    #[arg(long, default_value = "")]
    services: String,
    /// Whether it may also read the registry and `/metrics` on the control listener.
    #[arg(long)]
    read: bool,
    /// Whom it is for: logged with every change made with it.
    #[arg(long)]
    subject: String,
    /// How long it is valid: a number with `s`, `m`, `h` or `d` (`30d`). At most 400 days.
    #[arg(long, default_value = "30d", value_parser = parse_ttl)]
    ttl: u64,
    /// Its id (logged instead of the token); a random one by default.
    #[arg(long)]
    id: Option<String>,
}

/// Longest lifetime `issue` signs: a credential that outlives every rotation is a key.
const TTL_S_MAX: u64 = 400 * 86_400;

fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a number followed by s, m, h or d"))?;
    let seconds = match unit {
        "s" | "" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3_600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if seconds == 0 || seconds > TTL_S_MAX {
        return Err(format!("{text:?}: must be between 1 s and 400 days"));
    }
    Ok(seconds)
}

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Keygen { out } => keygen(&out),
        TokenCommand::Issue(args) => {
            println!("{}", issue(&args)?);
            Ok(())
        }
        TokenCommand::Revoke(args) => revoke::run(&args),
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let (private, public) = auth::generate_key()?;
    let private_path = with_suffix(out, ".key");
    let public_path = with_suffix(out, ".pub.pem");
    write_new(&private_path, private.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    let id = SigningKey::from_pem(&private)?.id().to_owned();
    eprintln!(
        "wrote {} (private: keep it off the gateways) and {} (public: add it to control.jwt_keys_file); key id {id}",
        private_path.display(),
        public_path.display()
    );
    Ok(())
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a file that must not exist yet, with `mode` on Unix.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn issue(args: &IssueArgs) -> anyhow::Result<String> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read {}", args.key.display()))?;
    let key = SigningKey::from_pem(&pem).with_context(|| format!("key {}", args.key.display()))?;
    let services: Vec<String> = args
        .services
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if services.is_empty() && !args.read {
        anyhow::bail!("the credential would allow nothing: give --services, --read, or both");
    }
    let now_s = SystemClock.now_ms() / 1_000;
    let id = args.id.clone().unwrap_or_else(|| {
        format!(
            "{:016x}{:016x}",
            switchyard::seams::os_seed(),
            switchyard::seams::os_seed().rotate_left(17) ^ now_s
        )
    });
    let claims = Claims {
        aud: AUDIENCE.to_owned(),
        sub: args.subject.clone(),
        jti: id,
        iat: now_s,
        exp: now_s + args.ttl,
        nbf: None,
        services,
        read: args.read,
    };
    // The gateway would refuse what it cannot read; check it here, with the key's own half.
    let token = auth::issue(&key, &claims)?;
    let check = auth::Authenticator::new(
        auth::Mode::Required,
        auth::KeySet::from_pem(key.public_pem())?,
        0,
    );
    check
        .verify(&token, now_s * 1_000)
        .map_err(|refusal| anyhow::anyhow!("{}", refusal.to_error()))?;
    Ok(token)
}
