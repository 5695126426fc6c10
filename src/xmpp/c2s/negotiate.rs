//! Stream negotiation of a client connection: TLS (STARTTLS, or direct TLS), SASL (SCRAM;
//! PLAIN only inside TLS and only when no SCRAM is offered) and resource binding.

use super::*;

pub(super) async fn tls(
    settings: &Settings,
    tcp: TcpStream,
) -> Result<Box<dyn Conn>, SessionError> {
    let name = rustls::pki_types::ServerName::try_from(settings.jid.domain().as_str().to_owned())
        .map_err(|e| {
        transient(format!(
            "{} is not a TLS server name: {e}",
            settings.jid.domain()
        ))
    })?;
    let tls = tokio_rustls::TlsConnector::from(settings.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| transient(format!("TLS with {}: {e}", settings.jid.domain())))?;
    Ok(Box::new(tls))
}

/// Connects, secures and authenticates: returns the stream ready for `bind` or `resume`.
pub(super) async fn authenticate(
    settings: &Settings,
    guard: &Guard,
) -> Result<(StreamFeatures, Xml), SessionError> {
    let domain = settings.jid.domain().as_str();
    let addr = format!("{}:{}", settings.host, settings.port);
    // Users choose the server: it must be public unless the config allows it, so that a
    // login cannot make the bridge probe its own network. The address checked is the one
    // connected to.
    let targets: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((settings.host.as_str(), settings.port))
            .await
            .map_err(|e| transient(Reason::because(addr.to_string(), e)))?
            .filter(|a| settings.allow_private || crate::media::is_public(a.ip()))
            .collect();
    if targets.is_empty() {
        return Err(SessionError::Auth(format!(
            "{addr} is not a public address; the bridge's administrator can allow it in networks.xmpp.accounts.allow_hosts"
        ).into()));
    }
    // Each address in turn (an IPv6 address without a route should not end the attempt),
    // at most six.
    let mut last_error = String::new();
    let mut connected = None;
    for target in targets.iter().take(6) {
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => {
                connected = Some(tcp);
                break;
            }
            Ok(Err(e)) => last_error = format!("{addr} ({target}): {e}"),
            Err(_) => last_error = format!("{addr} ({target}): connection timed out"),
        }
    }
    let tcp = connected.ok_or_else(|| transient(last_error))?;
    let _ = tcp.set_nodelay(true);
    let secured = if settings.direct_tls {
        tls(settings, tcp).await?
    } else {
        // The limits apply from the first byte: the server is the user's choice.
        let plain = BufStream::new(Limited::new(tcp, guard.clone()));
        let pending = initiate_stream(plain, CLIENT_NS, header(domain), timeouts())
            .await
            .map_err(|e| transient(Reason::because(format!("stream with {addr}"), e)))?;
        let (features, mut xml) = pending
            .recv_features::<Element>()
            .await
            .map_err(|e| transient(Reason::because("no stream features", e)))?;
        if !features.can_starttls() {
            return Err(SessionError::Auth(format!(
                "{domain} does not offer STARTTLS; the bridge never sends a password in the clear"
            ).into()));
        }
        send(&mut xml, &starttls::Request.into()).await?;
        let answer = read(&mut xml, guard).await?;
        if starttls::Proceed::try_from(answer).is_err() {
            return Err(transient(format!("{domain} refused STARTTLS")));
        }
        let tcp = xml.into_inner().into_inner().into_inner();
        tls(settings, tcp).await?
    };
    let pending = initiate_stream(
        limited(secured, guard),
        CLIENT_NS,
        header(domain),
        timeouts(),
    )
    .await
    .map_err(|e| transient(Reason::because(format!("stream with {addr}"), e)))?;
    let (features, mut xml) = recv_features(pending).await?;
    let offered: Vec<&str> = features
        .sasl_mechanisms
        .iter()
        .map(String::as_str)
        .collect();
    let user = settings.jid.node().map(|n| n.as_str()).unwrap_or_default();
    match Hash::choose(offered.iter().copied()) {
        Some(hash) => {
            let mut scram = Scram::new(hash, user, &settings.password);
            send(
                &mut xml,
                &sasl::Auth {
                    mechanism: match hash {
                        Hash::Sha1 => sasl::Mechanism::ScramSha1,
                        Hash::Sha256 => sasl::Mechanism::ScramSha256,
                    },
                    data: scram.client_first().into_bytes(),
                }
                .into(),
            )
            .await?;
            let challenge = sasl_step(&mut xml, guard).await?;
            let SaslStep::Challenge(server_first) = challenge else {
                return Err(transient("the server skipped the SCRAM challenge"));
            };
            // The key derivation takes the server's iteration count: off the runtime.
            let (back, fin) = tokio::task::spawn_blocking(move || {
                let fin = scram.client_final(&server_first);
                (scram, fin)
            })
            .await
            .map_err(|e| transient(Reason::because("SCRAM computation failed", e)))?;
            scram = back;
            let fin = fin.map_err(|e| SessionError::Auth(Reason::from_error(e)))?;
            send(
                &mut xml,
                &sasl::Response {
                    data: fin.into_bytes(),
                }
                .into(),
            )
            .await?;
            match sasl_step(&mut xml, guard).await? {
                SaslStep::Success(server_final) => scram
                    .verify(&server_final)
                    .map_err(|e| SessionError::Auth(Reason::from_error(e)))?,
                SaslStep::Challenge(server_final) => {
                    scram
                        .verify(&server_final)
                        .map_err(|e| SessionError::Auth(Reason::from_error(e)))?;
                    send(&mut xml, &sasl::Response { data: Vec::new() }.into()).await?;
                    let SaslStep::Success(_) = sasl_step(&mut xml, guard).await? else {
                        return Err(transient("the server did not finish SCRAM"));
                    };
                }
            }
        }
        None if offered.contains(&"PLAIN") => {
            let payload = format!("\0{user}\0{}", settings.password);
            send(
                &mut xml,
                &sasl::Auth {
                    mechanism: sasl::Mechanism::Plain,
                    data: payload.into_bytes(),
                }
                .into(),
            )
            .await?;
            let SaslStep::Success(_) = sasl_step(&mut xml, guard).await? else {
                return Err(transient("the server sent a challenge for PLAIN"));
            };
        }
        None => {
            return Err(SessionError::Auth(
                format!(
                    "{domain} offers no SASL mechanism the bridge speaks (offered: {})",
                    offered.join(", ")
                )
                .into(),
            ));
        }
    }
    guard.restart();
    let pending = xml
        .initiate_reset()
        .send_header(header(domain))
        .await
        .map_err(|e| transient(Reason::because("stream restart", e)))?;
    recv_features(pending).await
}

pub(super) enum SaslStep {
    Challenge(String),
    Success(String),
}

/// Reads the server's next SASL step. Read by hand: the crate's `Failure` refuses a
/// condition RFC 6120 does not list (this reports it by name), and its base64 refuses the
/// whitespace around the text that this trims.
pub(super) async fn sasl_step(xml: &mut Xml, guard: &Guard) -> Result<SaslStep, SessionError> {
    let el = read(xml, guard).await?;
    let text = || {
        B64.decode(el.text().trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    };
    if el.is("challenge", SASL_NS) {
        Ok(SaslStep::Challenge(text()))
    } else if el.is("success", SASL_NS) {
        Ok(SaslStep::Success(text()))
    } else if el.is("failure", SASL_NS) {
        let cond = el
            .children()
            .find(|c| c.name() != "text")
            .map(|c| c.name().to_owned())
            .unwrap_or_else(|| "failure".into());
        let words = el
            .children()
            .find(|c| c.name() == "text")
            .map(|t| format!(": {}", t.text()))
            .unwrap_or_default();
        if cond == "temporary-auth-failure" {
            Err(transient(format!(
                "the server could not check the password now{words}"
            )))
        } else {
            Err(SessionError::Auth(
                format!("the server refused the login ({cond}{words})").into(),
            ))
        }
    } else {
        Err(transient(format!(
            "unexpected <{}/> during SASL",
            el.name()
        )))
    }
}

/// Binds a resource; returns the full JID the server gave.
pub(super) async fn bind(
    xml: &mut Xml,
    guard: &Guard,
    resource: &str,
) -> Result<FullJid, SessionError> {
    let iq = Iq::Set {
        from: None,
        to: None,
        id: "bind-1".into(),
        payload: BindQuery::new(Some(resource.to_owned())).into(),
    };
    send(xml, &to_client(Stanza::Iq(iq))).await?;
    loop {
        let el = read(xml, guard).await?;
        if !(el.name() == "iq" && el.attr("id") == Some("bind-1")) {
            debug!(name = el.name(), "ignored before the resource is bound");
            continue;
        }
        if el.attr("type") != Some("result") {
            return Err(transient("the server refused to bind a resource"));
        }
        let bound = el
            .get_child("bind", BIND_NS)
            .ok_or_else(|| transient("the bind result has no JID"))?;
        return BindResponse::try_from(bound.clone())
            .map(FullJid::from)
            .map_err(|e| transient(Reason::because("the server bound no valid JID", e)));
    }
}
