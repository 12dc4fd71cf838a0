//! Loading a dataset through the public API, as its users would.

use super::dataset::Dataset;
use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::upload_csv::{self, LocatedRecord};
use crate::{devkeys, token, upload};
use anyhow::Context;
use cpis_proto::gateway as pb;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub organisations: usize,
    pub accepted: u32,
    pub rejected: u32,
    pub lookups: usize,
}

pub const DEMO_ADMIN_ORG: &str = "X26";
const LOADER_TTL: Duration = Duration::from_secs(3600);
const LOOKUPS_IN_FLIGHT: usize = 8;

fn token_for(
    keys: &devkeys::DevKeys,
    user: &str,
    org: &str,
    role: &str,
    activity: &str,
) -> CliResult<String> {
    Ok(token::sign(
        keys,
        user,
        org,
        role,
        &[activity.to_owned()],
        LOADER_TTL,
    )?)
}

fn gateway_with(base: &GatewayArgs, token: String) -> CliResult<Gateway> {
    let mut args = base.clone();
    args.token = Some(token);
    Gateway::connect(&args)
}

/// Loads the dataset through the public API, as its users would: an administrator onboards
/// the organisations, each local authority uploads its flags, clinicians at the trusts' sites
/// look children up (each lookup records an attendance and notifies the flag's owner).
pub async fn load(dataset: &Dataset, base: &GatewayArgs, data_dir: &Path) -> CliResult<LoadReport> {
    let keys = devkeys::load(data_dir)?;
    let mut report = LoadReport::default();

    let admin = gateway_with(
        base,
        token_for(&keys, "demo.admin", DEMO_ADMIN_ORG, "R0001", "CPIS_ADMIN")?,
    )?;
    let mut admin_client =
        pb::administration_client::AdministrationClient::new(admin.channel.clone());
    let organisations = dataset
        .local_authorities
        .iter()
        .map(|la| (&la.ods_code, &la.name, pb::OrganisationKind::LocalAuthority))
        .chain(
            dataset
                .trusts
                .iter()
                .map(|t| (&t.ods_code, &t.name, pb::OrganisationKind::Health)),
        );
    for (ods_code, name, kind) in organisations {
        let request = pb::UpsertOrganisationRequest {
            ods_code: ods_code.clone(),
            name: name.clone(),
            kind: kind.into(),
            onboarded: true,
        };
        // A gateway just started may answer UNAVAILABLE until its backends are ready.
        let mut attempts = 0;
        loop {
            match admin_client
                .upsert_organisation(admin.request(request.clone())?)
                .await
            {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::Unavailable && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => {
                    return Err(Failure::needing(platform::domain::Activity::Admin)(status));
                }
            }
        }
        report.organisations += 1;
    }

    for la in dataset
        .local_authorities
        .iter()
        .filter(|la| !la.flags.is_empty())
    {
        let gateway = gateway_with(
            base,
            token_for(
                &keys,
                &format!("mash.{}", la.ods_code),
                &la.ods_code,
                "R9000",
                "CPIS_LA_MANAGE",
            )?,
        )?;
        let bytes = upload_csv::write_upload_csv(&la.flags).context("writing flags")?;
        let records = la
            .flags
            .iter()
            .map(|f| LocatedRecord {
                line: 0,
                record: f.clone(),
            })
            .collect();
        let answer =
            upload::send(&gateway, &upload::content_id(&bytes), records, 1000, false).await?;
        report.accepted += answer.accepted;
        report.rejected += answer.rejected;
    }

    let mut clinicians: BTreeMap<(&str, &str), Gateway> = BTreeMap::new();
    for a in &dataset.attendances {
        let key = (a.trust.as_str(), a.user_id.as_str());
        if let std::collections::btree_map::Entry::Vacant(slot) = clinicians.entry(key) {
            let token = token_for(&keys, &a.user_id, &a.trust, &a.role_code, "B0107")?;
            slot.insert(gateway_with(base, token)?);
        }
    }
    let lookups = dataset.attendances.iter().map(|a| {
        let gateway = clinicians
            .get(&(a.trust.as_str(), a.user_id.as_str()))
            .cloned();
        async move {
            let gateway = gateway.ok_or_else(|| Failure::usage("no clinician token"))?;
            let request = pb::LookupChildRequest {
                nhs_number: a.nhs_number.clone(),
                access_kind: pb::AccessKind::Unscheduled.into(),
                setting: Some(pb::Setting {
                    ods_code: a.site.clone(),
                    setting_type: a.setting_type.into(),
                }),
                request_id: String::new(),
            };
            pb::child_protection_client::ChildProtectionClient::new(gateway.channel.clone())
                .lookup_child(gateway.request(request)?)
                .await
                .map_err(Failure::needing(
                    platform::domain::Activity::NotifyingLookup,
                ))?;
            Ok::<(), Failure>(())
        }
    });
    let mut results = futures::stream::iter(lookups).buffer_unordered(LOOKUPS_IN_FLIGHT);
    while let Some(result) = results.next().await {
        result?;
        report.lookups += 1;
    }
    Ok(report)
}
