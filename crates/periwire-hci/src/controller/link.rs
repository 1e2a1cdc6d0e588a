//! The radio side of the controller: what it does with each [`LinkPdu`], and the host replies
//! that drive pairing and encryption (Vol 2, Part C, 4.2: LMP security procedures; Vol 6,
//! Part B, 5.1.3: LE encryption start).

use std::time::Instant;

use super::handlers::HCI_VERSION;
use super::{slots, Auth, Connection, Controller, Incoming, LeConnecting, LeEnc, Role};
use crate::medium::{AdapterId, Advertisement, Dest, LinkPdu, Transport};
use crate::wire::{self as w, BdAddr, ClassOfDevice, Counted, ErrorCode, HciEvent, LenBytes};

/// RSSI reported for every simulated peer, in dBm.
const SIMULATED_RSSI: i8 = -40;

impl Controller {
    /// Handles a PDU the radio delivers from adapter `from`.
    pub fn handle_link(&mut self, now: Instant, from: AdapterId, pdu: LinkPdu) {
        tracing::trace!(adapter = %self.id, %from, ?pdu, "link");
        match pdu {
            LinkPdu::Inquiry => {
                if self.config.bredr && self.host.scan_enable & 0x01 != 0 {
                    self.send(
                        Dest::Adapter(from),
                        LinkPdu::InquiryResponse {
                            bd_addr: self.config.address,
                            class_of_device: self.host.class_of_device,
                            eir: self.host.eir,
                        },
                    );
                }
            }
            LinkPdu::InquiryResponse {
                bd_addr,
                class_of_device,
                eir,
            } => self.inquiry_response(bd_addr, class_of_device, eir),
            LinkPdu::Page {
                bd_addr,
                class_of_device,
            } => self.paged(now, from, bd_addr, class_of_device),
            LinkPdu::PageAccept {
                bd_addr,
                role_switch,
            } => {
                if self.pages.remove(&bd_addr).is_none() {
                    // Cancelled or timed out meanwhile: take the link down again.
                    self.send(
                        Dest::Adapter(from),
                        LinkPdu::Disconnect {
                            transport: Transport::BrEdr,
                            reason: ErrorCode::ConnectionTerminatedByLocalHost,
                        },
                    );
                    return;
                }
                let handle = self.alloc_handle();
                let role = if role_switch {
                    Role::Peripheral
                } else {
                    Role::Central
                };
                self.connections.insert(
                    handle,
                    Connection::new(handle, from, Transport::BrEdr, bd_addr, 0, role),
                );
                if role_switch {
                    self.push_event(HciEvent::RoleChange(w::RoleChange {
                        status: ErrorCode::Success,
                        bd_addr,
                        new_role: 1,
                    }));
                }
                self.push_event(HciEvent::ConnectionComplete(w::ConnectionComplete {
                    status: ErrorCode::Success,
                    connection_handle: handle,
                    bd_addr,
                    link_type: 0x01,
                    encryption_enabled: 0,
                }));
            }
            LinkPdu::PageReject { bd_addr, reason } => {
                if self.pages.remove(&bd_addr).is_some() {
                    self.connection_complete_failed(reason, bd_addr);
                }
            }
            LinkPdu::PageCancel => self.incoming.retain(|_, i| i.from != from),
            LinkPdu::NameRequest => {
                let connected = self.conn_by_peer(from, Transport::BrEdr).is_some();
                if self.config.bredr && (connected || self.host.scan_enable & 0x02 != 0) {
                    self.send(
                        Dest::Adapter(from),
                        LinkPdu::NameResponse {
                            bd_addr: self.config.address,
                            name: self.host.local_name,
                        },
                    );
                }
            }
            LinkPdu::NameResponse { bd_addr, name } => {
                if self.name_requests.remove(&bd_addr).is_some() {
                    self.push_event(HciEvent::RemoteNameRequestComplete(
                        w::RemoteNameRequestComplete {
                            status: ErrorCode::Success,
                            bd_addr,
                            remote_name: name,
                        },
                    ));
                }
            }
            LinkPdu::FeaturesRequest {
                transport,
                extended,
                page,
            } => {
                let features = match (transport, page) {
                    (Transport::Le, _) => self.le_features(),
                    (Transport::BrEdr, 0) => self.lmp_features(),
                    (Transport::BrEdr, 1) => self.lmp_host_features(),
                    _ => [0; 8],
                };
                self.send(
                    Dest::Adapter(from),
                    LinkPdu::FeaturesResponse {
                        transport,
                        extended,
                        page,
                        max_page: 1,
                        features,
                    },
                );
            }
            LinkPdu::FeaturesResponse {
                transport,
                extended,
                page,
                max_page,
                features,
            } => {
                let Some(handle) = self.conn_by_peer(from, transport) else {
                    return;
                };
                let ev = match (transport, extended) {
                    (Transport::Le, _) => HciEvent::le_meta(w::LeReadRemoteFeaturesComplete {
                        status: ErrorCode::Success,
                        connection_handle: handle,
                        le_features: features,
                    }),
                    (Transport::BrEdr, false) => HciEvent::ReadRemoteSupportedFeaturesComplete(
                        w::ReadRemoteSupportedFeaturesComplete {
                            status: ErrorCode::Success,
                            connection_handle: handle,
                            lmp_features: features,
                        },
                    ),
                    (Transport::BrEdr, true) => HciEvent::ReadRemoteExtendedFeaturesComplete(
                        w::ReadRemoteExtendedFeaturesComplete {
                            status: if page <= max_page {
                                ErrorCode::Success
                            } else {
                                ErrorCode::InvalidHciCommandParameters
                            },
                            connection_handle: handle,
                            page_number: page,
                            maximum_page_number: max_page,
                            extended_lmp_features: features,
                        },
                    ),
                };
                self.push_event(ev);
            }
            LinkPdu::VersionRequest { transport } => self.send(
                Dest::Adapter(from),
                LinkPdu::VersionResponse {
                    transport,
                    version: HCI_VERSION,
                    company: self.config.company_identifier,
                    subversion: 0x0001,
                },
            ),
            LinkPdu::VersionResponse {
                transport,
                version,
                company,
                subversion,
            } => {
                if let Some(handle) = self.conn_by_peer(from, transport) {
                    self.push_event(HciEvent::ReadRemoteVersionInformationComplete(
                        w::ReadRemoteVersionInformationComplete {
                            status: ErrorCode::Success,
                            connection_handle: handle,
                            version,
                            company_identifier: company,
                            subversion,
                        },
                    ));
                }
            }
            LinkPdu::Advertisement(adv) => self.on_advertisement(from, adv),
            LinkPdu::ScanStart => {
                if let Some(adv) = self.advertisement() {
                    self.send(Dest::Adapter(from), LinkPdu::Advertisement(adv));
                }
            }
            LinkPdu::ConnectInd {
                initiator_address,
                initiator_address_type,
                advertiser_address,
                interval,
                latency,
                timeout,
            } => {
                let ok = self.advertisement().is_some_and(|adv| {
                    adv.connectable()
                        && adv.address == advertiser_address
                        && adv
                            .direct
                            .is_none_or(|d| d == (initiator_address_type, initiator_address))
                });
                if !ok {
                    self.send(Dest::Adapter(from), LinkPdu::ConnectReject);
                    return;
                }
                // A legacy advertiser stops advertising when it gets connected.
                self.host.advertising = false;
                let handle = self.alloc_handle();
                let mut conn = Connection::new(
                    handle,
                    from,
                    Transport::Le,
                    initiator_address,
                    initiator_address_type,
                    Role::Peripheral,
                );
                conn.params = (interval, latency, timeout);
                self.connections.insert(handle, conn);
                self.send(Dest::Adapter(from), LinkPdu::ConnectAccept);
                self.le_meta(w::LeConnectionComplete {
                    status: ErrorCode::Success,
                    connection_handle: handle,
                    role: Role::Peripheral.to_u8(),
                    peer_address_type: initiator_address_type,
                    peer_address: initiator_address,
                    connection_interval: interval,
                    peripheral_latency: latency,
                    supervision_timeout: timeout,
                    central_clock_accuracy: 0,
                });
            }
            LinkPdu::ConnectAccept => {
                let sent = match &self.le_connecting {
                    Some(p) => match p.state {
                        LeConnecting::Sent {
                            to,
                            address,
                            address_type,
                        } if to == from => Some((address, address_type, p.params)),
                        _ => None,
                    },
                    None => None,
                };
                let Some((address, address_type, params)) = sent else {
                    self.send(
                        Dest::Adapter(from),
                        LinkPdu::Disconnect {
                            transport: Transport::Le,
                            reason: ErrorCode::ConnectionTerminatedByLocalHost,
                        },
                    );
                    return;
                };
                self.le_connecting = None;
                let handle = self.alloc_handle();
                let mut conn = Connection::new(
                    handle,
                    from,
                    Transport::Le,
                    address,
                    address_type,
                    Role::Central,
                );
                conn.params = params;
                self.connections.insert(handle, conn);
                self.le_meta(w::LeConnectionComplete {
                    status: ErrorCode::Success,
                    connection_handle: handle,
                    role: Role::Central.to_u8(),
                    peer_address_type: address_type,
                    peer_address: address,
                    connection_interval: params.0,
                    peripheral_latency: params.1,
                    supervision_timeout: params.2,
                    central_clock_accuracy: 0,
                });
            }
            LinkPdu::ConnectReject => {
                if let Some(p) = &mut self.le_connecting {
                    if matches!(p.state, LeConnecting::Sent { to, .. } if to == from) {
                        p.state = LeConnecting::Waiting;
                    }
                }
            }
            LinkPdu::ConnectionUpdate {
                interval,
                latency,
                timeout,
            } => {
                if let Some(handle) = self.conn_by_peer(from, Transport::Le) {
                    if let Some(c) = self.connections.get_mut(&handle) {
                        c.params = (interval, latency, timeout);
                    }
                    self.le_meta(w::LeConnectionUpdateComplete {
                        status: ErrorCode::Success,
                        connection_handle: handle,
                        connection_interval: interval,
                        peripheral_latency: latency,
                        supervision_timeout: timeout,
                    });
                }
            }
            LinkPdu::Acl {
                transport,
                first,
                data,
            } => self.receive_acl(from, transport, first, data),
            LinkPdu::AclAck { transport } => {
                let Some(handle) = self.conn_by_peer(from, transport) else {
                    return;
                };
                let pool = match transport {
                    Transport::BrEdr => 0,
                    Transport::Le => 1,
                };
                if let Some(c) = self.connections.get_mut(&handle) {
                    c.tx_in_flight = c.tx_in_flight.saturating_sub(1);
                }
                self.acl_in_flight[pool] = self.acl_in_flight[pool].saturating_sub(1);
                self.complete_packet(handle);
            }
            LinkPdu::Disconnect { transport, reason } => {
                if let Some(handle) = self.conn_by_peer(from, transport) {
                    self.drop_connection(handle, reason);
                }
            }
            LinkPdu::PeerGone => {
                let gone: Vec<u16> = self
                    .connections
                    .values()
                    .filter(|c| c.peer == from)
                    .map(|c| c.handle)
                    .collect();
                for h in gone {
                    self.drop_connection(h, ErrorCode::ConnectionTimeout);
                }
                self.incoming.retain(|_, i| i.from != from);
                if let Some(p) = &mut self.le_connecting {
                    if matches!(p.state, LeConnecting::Sent { to, .. } if to == from) {
                        p.state = LeConnecting::Waiting;
                    }
                }
            }
            LinkPdu::KeyCheck { key } => {
                self.responder_auth(from, Auth::ResponderAwaitHostLinkKey { key }, |addr| {
                    HciEvent::LinkKeyRequest(w::LinkKeyRequest { bd_addr: addr })
                });
            }
            LinkPdu::KeyCheckResult { status } => {
                let Some((handle, auth)) = self.auth_of(from) else {
                    return;
                };
                let Auth::AwaitKeyCheck { key } = auth else {
                    return;
                };
                self.set_auth(handle, Auth::Idle);
                if status.is_success() {
                    if let Some(c) = self.connections.get_mut(&handle) {
                        c.link_key = Some((key, 0xff));
                    }
                }
                self.push_event(HciEvent::AuthenticationComplete(
                    w::AuthenticationComplete {
                        status,
                        connection_handle: handle,
                    },
                ));
            }
            LinkPdu::PairingStart { .. } => {
                let ssp = self.host.simple_pairing_mode != 0;
                self.send(Dest::Adapter(from), LinkPdu::PairingStartResponse { ssp });
            }
            LinkPdu::PairingStartResponse { ssp } => {
                let Some((handle, Auth::AwaitPairingStart)) = self.auth_of(from) else {
                    return;
                };
                let Some(addr) = self.connections.get(&handle).map(|c| c.peer_addr) else {
                    return;
                };
                if ssp && self.host.simple_pairing_mode != 0 {
                    self.set_auth(handle, Auth::AwaitHostIoCap);
                    self.push_event(HciEvent::IoCapabilityRequest(w::IoCapabilityRequest {
                        bd_addr: addr,
                    }));
                } else {
                    self.set_auth(handle, Auth::AwaitHostPin);
                    self.push_event(HciEvent::PinCodeRequest(w::PinCodeRequest {
                        bd_addr: addr,
                    }));
                }
            }
            LinkPdu::IoCapabilityRequest {
                io_capability,
                oob_data_present,
                authentication_requirements,
            } => {
                let Some(handle) = self.conn_by_peer(from, Transport::BrEdr) else {
                    return;
                };
                let Some(addr) = self.connections.get(&handle).map(|c| c.peer_addr) else {
                    return;
                };
                self.set_auth(handle, Auth::ResponderAwaitHostIoCap);
                self.push_event(HciEvent::IoCapabilityResponse(w::IoCapabilityResponse {
                    bd_addr: addr,
                    io_capability,
                    oob_data_present,
                    authentication_requirements,
                }));
                self.push_event(HciEvent::IoCapabilityRequest(w::IoCapabilityRequest {
                    bd_addr: addr,
                }));
            }
            LinkPdu::IoCapabilityResponse {
                io_capability,
                oob_data_present,
                authentication_requirements,
            } => {
                let Some((handle, Auth::AwaitPeerIoCap { io, auth_req })) = self.auth_of(from)
                else {
                    return;
                };
                let Some(addr) = self.connections.get(&handle).map(|c| c.peer_addr) else {
                    return;
                };
                self.push_event(HciEvent::IoCapabilityResponse(w::IoCapabilityResponse {
                    bd_addr: addr,
                    io_capability,
                    oob_data_present,
                    authentication_requirements,
                }));
                let key_type = key_type(io, auth_req, io_capability, authentication_requirements);
                let numeric_value = (self.random() % 1_000_000) as u32;
                let link_key = self.random_key();
                self.send(
                    Dest::Adapter(from),
                    LinkPdu::PairingValues {
                        numeric_value,
                        link_key,
                        key_type,
                    },
                );
                self.ask_confirmation(handle, addr, true, link_key, key_type, numeric_value);
            }
            LinkPdu::IoCapabilityReject { reason } => {
                let Some((handle, Auth::AwaitPeerIoCap { .. })) = self.auth_of(from) else {
                    return;
                };
                self.pairing_failed(handle, reason, true);
            }
            LinkPdu::PairingValues {
                numeric_value,
                link_key,
                key_type,
            } => {
                let Some((handle, Auth::ResponderAwaitValues)) = self.auth_of(from) else {
                    return;
                };
                let Some(addr) = self.connections.get(&handle).map(|c| c.peer_addr) else {
                    return;
                };
                self.ask_confirmation(handle, addr, false, link_key, key_type, numeric_value);
            }
            LinkPdu::PairingConfirm { accepted } => {
                let Some((handle, mut auth)) = self.auth_of(from) else {
                    return;
                };
                if let Auth::Confirm { theirs, .. } = &mut auth {
                    *theirs = Some(accepted);
                    self.set_auth(handle, auth);
                    self.check_pairing_done(handle);
                }
            }
            LinkPdu::LegacyPin { pin, link_key } => {
                self.responder_auth(
                    from,
                    Auth::ResponderAwaitHostPin { pin, link_key },
                    |addr| HciEvent::PinCodeRequest(w::PinCodeRequest { bd_addr: addr }),
                );
            }
            LinkPdu::LegacyPinResult { status } => {
                let Some((handle, Auth::AwaitPinResult { link_key })) = self.auth_of(from) else {
                    return;
                };
                self.set_auth(handle, Auth::Idle);
                let Some(addr) = self.connections.get(&handle).map(|c| c.peer_addr) else {
                    return;
                };
                if status.is_success() {
                    if let Some(c) = self.connections.get_mut(&handle) {
                        c.link_key = Some((link_key, 0x00));
                    }
                    self.push_event(HciEvent::LinkKeyNotification(w::LinkKeyNotification {
                        bd_addr: addr,
                        link_key,
                        key_type: 0x00,
                    }));
                }
                self.push_event(HciEvent::AuthenticationComplete(
                    w::AuthenticationComplete {
                        status,
                        connection_handle: handle,
                    },
                ));
            }
            LinkPdu::StartEncryption { enable } => {
                if let Some(handle) = self.conn_by_peer(from, Transport::BrEdr) {
                    if let Some(c) = self.connections.get_mut(&handle) {
                        c.encrypted = enable;
                    }
                    self.push_event(HciEvent::EncryptionChange(w::EncryptionChange {
                        status: ErrorCode::Success,
                        connection_handle: handle,
                        encryption_enabled: u8::from(enable),
                    }));
                }
            }
            LinkPdu::LeEncryptionRequest {
                random_number,
                encrypted_diversifier,
                long_term_key,
            } => {
                let Some(handle) = self.conn_by_peer(from, Transport::Le) else {
                    return;
                };
                if let Some(c) = self.connections.get_mut(&handle) {
                    c.le_enc = LeEnc::PeripheralAwaitHost { ltk: long_term_key };
                }
                self.le_meta(w::LeLongTermKeyRequest {
                    connection_handle: handle,
                    random_number,
                    encrypted_diversifier,
                });
            }
            LinkPdu::LeEncryptionResponse { status } => {
                let Some(handle) = self.conn_by_peer(from, Transport::Le) else {
                    return;
                };
                let Some(c) = self.connections.get_mut(&handle) else {
                    return;
                };
                if c.le_enc != LeEnc::CentralWaiting {
                    return;
                }
                c.le_enc = LeEnc::Idle;
                let was = c.encrypted;
                if status.is_success() {
                    c.encrypted = true;
                }
                self.le_encryption_outcome(handle, status, was);
            }
        }
    }

    fn inquiry_response(&mut self, bd_addr: BdAddr, cod: ClassOfDevice, eir: [u8; 240]) {
        let Some(inq) = &mut self.inquiry else {
            return;
        };
        if !inq.found.insert(bd_addr) {
            return;
        }
        let done = inq.max_responses != 0 && inq.found.len() >= usize::from(inq.max_responses);
        let ev = match self.host.inquiry_mode {
            0 => HciEvent::InquiryResult(w::InquiryResult {
                responses: Counted(vec![w::InquiryResponse {
                    bd_addr,
                    page_scan_repetition_mode: 0x01,
                    reserved: [0; 2],
                    class_of_device: cod,
                    clock_offset: 0,
                }]),
            }),
            1 => HciEvent::InquiryResultWithRssi(w::InquiryResultWithRssi {
                responses: Counted(vec![w::InquiryResponseWithRssi {
                    bd_addr,
                    page_scan_repetition_mode: 0x01,
                    reserved: 0,
                    class_of_device: cod,
                    clock_offset: 0,
                    rssi: SIMULATED_RSSI,
                }]),
            }),
            _ => HciEvent::ExtendedInquiryResult(w::ExtendedInquiryResult {
                num_responses: 1,
                bd_addr,
                page_scan_repetition_mode: 0x01,
                reserved: 0,
                class_of_device: cod,
                clock_offset: 0,
                rssi: SIMULATED_RSSI,
                extended_inquiry_response: eir,
            }),
        };
        self.push_event(ev);
        if done {
            self.inquiry = None;
            self.push_event(HciEvent::InquiryComplete(w::InquiryComplete {
                status: ErrorCode::Success,
            }));
        }
    }

    fn paged(&mut self, now: Instant, from: AdapterId, bd_addr: BdAddr, cod: ClassOfDevice) {
        if !self.config.bredr || self.host.scan_enable & 0x02 == 0 {
            return; // not page scanning: the pager times out
        }
        if self.conn_by_peer(from, Transport::BrEdr).is_some() {
            self.send(
                Dest::Adapter(from),
                LinkPdu::PageReject {
                    bd_addr: self.config.address,
                    reason: ErrorCode::ConnectionAlreadyExists,
                },
            );
            return;
        }
        if self.incoming.contains_key(&bd_addr) {
            return;
        }
        self.incoming.insert(
            bd_addr,
            Incoming {
                from,
                deadline: now + slots(self.host.connection_accept_timeout),
            },
        );
        self.push_event(HciEvent::ConnectionRequest(w::ConnectionRequest {
            bd_addr,
            class_of_device: cod,
            link_type: 0x01,
        }));
    }

    fn on_advertisement(&mut self, from: AdapterId, adv: Advertisement) {
        let scan_own = self.own_le_address(self.host.scan_parameters.own_address_type);
        if let Some(scan) = &mut self.scanning {
            let listed = self
                .host
                .filter_accept_list
                .contains(&(adv.address_type, adv.address));
            let for_us = adv
                .direct
                .is_none_or(|d| Some(d) == scan_own.map(|(a, t)| (t, a)));
            if (scan.filter_policy & 1 == 0 || listed) && for_us {
                let event_type = match adv.advertising_type {
                    0 => 0,
                    1 | 4 => 1,
                    2 => 2,
                    _ => 3,
                };
                let mut reports = vec![(event_type, adv.data.clone())];
                if scan.active && adv.scannable() {
                    reports.push((4, adv.scan_response.clone()));
                }
                let mut out = Vec::new();
                for (event_type, data) in reports {
                    if scan.filter_duplicates
                        && !scan
                            .seen
                            .insert((adv.address, adv.address_type, event_type))
                    {
                        continue;
                    }
                    out.push(w::AdvertisingReport {
                        event_type,
                        address_type: adv.address_type,
                        address: adv.address,
                        data: LenBytes(data),
                        rssi: SIMULATED_RSSI,
                    });
                }
                for r in out {
                    self.le_meta(w::LeAdvertisingReport {
                        reports: Counted(vec![r]),
                    });
                }
            }
        }
        let Some(pending) = &self.le_connecting else {
            return;
        };
        if pending.state != LeConnecting::Waiting || !adv.connectable() {
            return;
        }
        let Some((own_addr, own_type)) = self.own_le_address(pending.own_address_type) else {
            return;
        };
        let target = match pending.filter_policy {
            0 => {
                pending.peer_address_type == adv.address_type && pending.peer_address == adv.address
            }
            _ => self
                .host
                .filter_accept_list
                .contains(&(adv.address_type, adv.address)),
        };
        let for_us = adv.direct.is_none_or(|d| d == (own_type, own_addr));
        if !target || !for_us {
            return;
        }
        let params = pending.params;
        if let Some(p) = &mut self.le_connecting {
            p.state = LeConnecting::Sent {
                to: from,
                address: adv.address,
                address_type: adv.address_type,
            };
        }
        self.send(
            Dest::Adapter(from),
            LinkPdu::ConnectInd {
                initiator_address: own_addr,
                initiator_address_type: own_type,
                advertiser_address: adv.address,
                interval: params.0,
                latency: params.1,
                timeout: params.2,
            },
        );
    }

    // ----- security -----

    fn auth_of(&self, peer: AdapterId) -> Option<(u16, Auth)> {
        let h = self.conn_by_peer(peer, Transport::BrEdr)?;
        Some((h, self.connections.get(&h)?.auth.clone()))
    }

    fn auth_by_addr(&self, addr: BdAddr) -> Option<(u16, Auth)> {
        let h = self.conn_by_addr(addr)?;
        Some((h, self.connections.get(&h)?.auth.clone()))
    }

    /// Both sides hold the pairing values: wait for the host's yes or no to `numeric_value`.
    fn ask_confirmation(
        &mut self,
        handle: u16,
        addr: BdAddr,
        initiator: bool,
        link_key: [u8; 16],
        key_type: u8,
        numeric_value: u32,
    ) {
        self.set_auth(
            handle,
            Auth::Confirm {
                initiator,
                link_key,
                key_type,
                mine: None,
                theirs: None,
            },
        );
        self.push_event(HciEvent::UserConfirmationRequest(
            w::UserConfirmationRequest {
                bd_addr: addr,
                numeric_value,
            },
        ));
    }

    fn set_auth(&mut self, handle: u16, auth: Auth) {
        if let Some(c) = self.connections.get_mut(&handle) {
            c.auth = auth;
        }
    }

    fn peer_of(&self, handle: u16) -> Option<(AdapterId, BdAddr)> {
        self.connections.get(&handle).map(|c| (c.peer, c.peer_addr))
    }

    fn responder_auth(
        &mut self,
        from: AdapterId,
        auth: Auth,
        event: impl FnOnce(BdAddr) -> HciEvent,
    ) {
        let Some(handle) = self.conn_by_peer(from, Transport::BrEdr) else {
            return;
        };
        let Some((_, addr)) = self.peer_of(handle) else {
            return;
        };
        self.set_auth(handle, auth);
        self.push_event(event(addr));
    }

    fn pairing_failed(&mut self, handle: u16, status: ErrorCode, initiator: bool) {
        self.set_auth(handle, Auth::Idle);
        let Some((_, addr)) = self.peer_of(handle) else {
            return;
        };
        self.push_event(HciEvent::SimplePairingComplete(w::SimplePairingComplete {
            status,
            bd_addr: addr,
        }));
        if initiator {
            self.push_event(HciEvent::AuthenticationComplete(
                w::AuthenticationComplete {
                    status,
                    connection_handle: handle,
                },
            ));
        }
    }

    /// The host's answer to Link Key Request.
    pub(super) fn link_key_reply(&mut self, addr: BdAddr, key: Option<[u8; 16]>) -> ErrorCode {
        let Some((handle, auth)) = self.auth_by_addr(addr) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let Some((peer, _)) = self.peer_of(handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        match (auth, key) {
            (Auth::AwaitHostLinkKey, Some(key)) => {
                self.set_auth(handle, Auth::AwaitKeyCheck { key });
                self.send(Dest::Adapter(peer), LinkPdu::KeyCheck { key });
            }
            (Auth::AwaitHostLinkKey, None) => {
                self.set_auth(handle, Auth::AwaitPairingStart);
                let ssp = self.host.simple_pairing_mode != 0;
                self.send(Dest::Adapter(peer), LinkPdu::PairingStart { ssp });
            }
            (Auth::ResponderAwaitHostLinkKey { key: theirs }, mine) => {
                self.set_auth(handle, Auth::Idle);
                let status = match mine {
                    Some(k) if k == theirs => ErrorCode::Success,
                    Some(_) => ErrorCode::AuthenticationFailure,
                    None => ErrorCode::PinOrKeyMissing,
                };
                if let (true, Some(c)) = (status.is_success(), self.connections.get_mut(&handle)) {
                    c.link_key = Some((theirs, 0xff));
                }
                self.send(Dest::Adapter(peer), LinkPdu::KeyCheckResult { status });
            }
            _ => return ErrorCode::CommandDisallowed,
        }
        ErrorCode::Success
    }

    /// The host's answer to PIN Code Request.
    pub(super) fn pin_reply(&mut self, addr: BdAddr, pin: Option<Vec<u8>>) -> ErrorCode {
        let Some((handle, auth)) = self.auth_by_addr(addr) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let Some((peer, _)) = self.peer_of(handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        match (auth, pin) {
            (Auth::AwaitHostPin, Some(pin)) => {
                let link_key = self.random_key();
                self.set_auth(handle, Auth::AwaitPinResult { link_key });
                self.send(Dest::Adapter(peer), LinkPdu::LegacyPin { pin, link_key });
            }
            (Auth::AwaitHostPin, None) => {
                self.set_auth(handle, Auth::Idle);
                self.push_event(HciEvent::AuthenticationComplete(
                    w::AuthenticationComplete {
                        status: ErrorCode::PinOrKeyMissing,
                        connection_handle: handle,
                    },
                ));
            }
            (
                Auth::ResponderAwaitHostPin {
                    pin: theirs,
                    link_key,
                },
                mine,
            ) => {
                self.set_auth(handle, Auth::Idle);
                let status = match mine {
                    Some(p) if p == theirs => ErrorCode::Success,
                    Some(_) => ErrorCode::AuthenticationFailure,
                    None => ErrorCode::PinOrKeyMissing,
                };
                if status.is_success() {
                    if let Some(c) = self.connections.get_mut(&handle) {
                        c.link_key = Some((link_key, 0x00));
                    }
                    self.push_event(HciEvent::LinkKeyNotification(w::LinkKeyNotification {
                        bd_addr: addr,
                        link_key,
                        key_type: 0x00,
                    }));
                }
                self.send(Dest::Adapter(peer), LinkPdu::LegacyPinResult { status });
            }
            _ => return ErrorCode::CommandDisallowed,
        }
        ErrorCode::Success
    }

    /// The host's answer to IO Capability Request.
    pub(super) fn io_capability_reply(
        &mut self,
        addr: BdAddr,
        caps: Result<(u8, u8, u8), ErrorCode>,
    ) -> ErrorCode {
        let Some((handle, auth)) = self.auth_by_addr(addr) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let Some((peer, _)) = self.peer_of(handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        match (auth, caps) {
            (Auth::AwaitHostIoCap, Ok((io, oob, auth_req))) => {
                self.set_auth(handle, Auth::AwaitPeerIoCap { io, auth_req });
                self.send(
                    Dest::Adapter(peer),
                    LinkPdu::IoCapabilityRequest {
                        io_capability: io,
                        oob_data_present: oob,
                        authentication_requirements: auth_req,
                    },
                );
            }
            (Auth::AwaitHostIoCap, Err(reason)) => self.pairing_failed(handle, reason, true),
            (Auth::ResponderAwaitHostIoCap, Ok((io, oob, auth_req))) => {
                self.set_auth(handle, Auth::ResponderAwaitValues);
                self.send(
                    Dest::Adapter(peer),
                    LinkPdu::IoCapabilityResponse {
                        io_capability: io,
                        oob_data_present: oob,
                        authentication_requirements: auth_req,
                    },
                );
            }
            (Auth::ResponderAwaitHostIoCap, Err(reason)) => {
                self.set_auth(handle, Auth::Idle);
                self.send(Dest::Adapter(peer), LinkPdu::IoCapabilityReject { reason });
            }
            _ => return ErrorCode::CommandDisallowed,
        }
        ErrorCode::Success
    }

    /// The host's answer to User Confirmation Request.
    pub(super) fn user_confirmation(&mut self, addr: BdAddr, accepted: bool) -> ErrorCode {
        let Some((handle, mut auth)) = self.auth_by_addr(addr) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let Some((peer, _)) = self.peer_of(handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let Auth::Confirm { mine, .. } = &mut auth else {
            return ErrorCode::CommandDisallowed;
        };
        if mine.is_some() {
            return ErrorCode::CommandDisallowed;
        }
        *mine = Some(accepted);
        self.set_auth(handle, auth);
        self.send(Dest::Adapter(peer), LinkPdu::PairingConfirm { accepted });
        self.check_pairing_done(handle);
        ErrorCode::Success
    }

    fn check_pairing_done(&mut self, handle: u16) {
        let Some(c) = self.connections.get(&handle) else {
            return;
        };
        let Auth::Confirm {
            initiator,
            link_key,
            key_type,
            mine: Some(a),
            theirs: Some(b),
        } = c.auth
        else {
            return;
        };
        let addr = c.peer_addr;
        if !(a && b) {
            self.pairing_failed(handle, ErrorCode::AuthenticationFailure, initiator);
            return;
        }
        self.set_auth(handle, Auth::Idle);
        if let Some(c) = self.connections.get_mut(&handle) {
            c.link_key = Some((link_key, key_type));
        }
        self.push_event(HciEvent::SimplePairingComplete(w::SimplePairingComplete {
            status: ErrorCode::Success,
            bd_addr: addr,
        }));
        self.push_event(HciEvent::LinkKeyNotification(w::LinkKeyNotification {
            bd_addr: addr,
            link_key,
            key_type,
        }));
        if initiator {
            self.push_event(HciEvent::AuthenticationComplete(
                w::AuthenticationComplete {
                    status: ErrorCode::Success,
                    connection_handle: handle,
                },
            ));
        }
    }

    /// Reports the end of an LE encryption start (Vol 6, Part B, 5.1.3.1) on this side.
    pub(super) fn le_encryption_outcome(
        &mut self,
        handle: u16,
        status: ErrorCode,
        was_encrypted: bool,
    ) {
        match status {
            ErrorCode::Success if was_encrypted => {
                self.push_event(HciEvent::EncryptionKeyRefreshComplete(
                    w::EncryptionKeyRefreshComplete {
                        status,
                        connection_handle: handle,
                    },
                ));
            }
            ErrorCode::ConnectionTerminatedMicFailure => self.drop_connection(handle, status),
            _ => self.push_event(HciEvent::EncryptionChange(w::EncryptionChange {
                status,
                connection_handle: handle,
                encryption_enabled: u8::from(status.is_success()),
            })),
        }
    }
}

/// The link key type Secure Simple Pairing yields (Vol 2, Part C, 4.2.7 and Vol 3, Part C,
/// 5.2.2.6): authenticated (0x05) when both IO capabilities allow MITM protection and one
/// side asked for it, unauthenticated (0x04) otherwise (Just Works).
fn key_type(io_a: u8, auth_a: u8, io_b: u8, auth_b: u8) -> u8 {
    const DISPLAY_ONLY: u8 = 0x00;
    const NO_INPUT_NO_OUTPUT: u8 = 0x03;
    let mitm_possible = io_a != NO_INPUT_NO_OUTPUT
        && io_b != NO_INPUT_NO_OUTPUT
        && !(io_a == DISPLAY_ONLY && io_b == DISPLAY_ONLY);
    let mitm_requested = (auth_a | auth_b) & 0x01 != 0;
    if mitm_possible && mitm_requested {
        0x05
    } else {
        0x04
    }
}
