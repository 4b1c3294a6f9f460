//! Compiling `access_log.syslog:`. Everything that can be checked without the server is checked
//! here, so that a typo is a refused config rather than a log that silently goes nowhere.

use super::*;
use crate::observe::syslog::{
    facility_code, is_header_field, split_host_port, SyslogTarget, SyslogTransport, FACILITIES,
    MAX_APP_NAME, MAX_HOSTNAME_SETTING,
};

const P: &str = "access_log.syslog";

impl Compiler<'_> {
    /// `access_log.syslog`, or `None` if it has errors (each one reported).
    pub(super) fn syslog_target(&mut self, s: &RawSyslog) -> Option<SyslogTarget> {
        let before = self.issues.len();
        let (host, port) = split_host_port(&s.address).unwrap_or_else(|e| {
            self.invalid(format!("{P}.address"), e);
            (String::new(), 0)
        });
        let transport = match s.transport.as_deref() {
            None => SyslogTransport::Tcp,
            Some(t) => SyslogTransport::from_name(t).unwrap_or_else(|| {
                let names: Vec<&str> = SyslogTransport::ALL.iter().map(|t| t.name()).collect();
                self.invalid(
                    format!("{P}.transport"),
                    format!("`{t}` is not a syslog transport: {}", names.join(", ")),
                );
                SyslogTransport::Tcp
            }),
        };
        let facility = match s.facility.as_deref() {
            None => facility_code("local0").expect("local0 is a facility"),
            Some(f) => facility_code(f).unwrap_or_else(|| {
                self.invalid(
                    format!("{P}.facility"),
                    format!("`{f}` is not a syslog facility: {}", FACILITIES.join(", ")),
                );
                0
            }),
        };
        let app_name = s.app_name.clone().unwrap_or_else(|| "portcullis".into());
        if !is_header_field(&app_name, MAX_APP_NAME) {
            self.invalid(
                format!("{P}.app_name"),
                format!("`{app_name}` must be 1 to {MAX_APP_NAME} printable ASCII characters without spaces (RFC 5424 APP-NAME)"),
            );
        }
        if let Some(h) = &s.hostname {
            if !is_header_field(h, MAX_HOSTNAME_SETTING) {
                self.invalid(
                    format!("{P}.hostname"),
                    format!("`{h}` must be 1 to {MAX_HOSTNAME_SETTING} printable ASCII characters without spaces (RFC 5424 HOSTNAME)"),
                );
            }
        }
        let tls = transport == SyslogTransport::Tls;
        for (field, set) in [
            ("ca_file", s.ca_file.is_some()),
            ("server_name", s.server_name.is_some()),
        ] {
            if set && !tls {
                self.invalid(
                    format!("{P}.{field}"),
                    format!(
                        "only used with `transport: tls` (the transport is `{}`)",
                        transport.name()
                    ),
                );
            }
        }
        let ca_certs = match &s.ca_file {
            Some(f) if tls => self.syslog_ca_file(f).unwrap_or_default(),
            _ => Vec::new(),
        };
        if tls {
            // The name the certificate is checked against, as rustls will take it at connect.
            let (field, name) = match &s.server_name {
                Some(n) => ("server_name", n.as_str()),
                None => ("address", host.as_str()),
            };
            if !name.is_empty()
                && rustls::pki_types::ServerName::try_from(name.to_string()).is_err()
            {
                self.invalid(
                    format!("{P}.{field}"),
                    format!("`{name}` is not a DNS name or IP address a certificate can be checked against{}", if field == "address" { "; set `server_name`" } else { "" }),
                );
            }
        }
        if self.issues.len() > before {
            return None;
        }
        Some(SyslogTarget {
            address: s.address.clone(),
            host,
            port,
            transport,
            facility,
            app_name,
            hostname: s.hostname.clone(),
            ca_certs,
            server_name: s.server_name.clone(),
        })
    }

    /// `ca_file`: readable PEM with at least one certificate rustls accepts as a trust root.
    fn syslog_ca_file(&mut self, f: &str) -> Option<Vec<Vec<u8>>> {
        self.ca_certificates(&format!("{P}.ca_file"), f)
    }
}
