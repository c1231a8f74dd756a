//! `milvus-fleet cloud-init`: the #cloud-config user-data that joins a new VM with no
//! hands: install the package (from an apt or dnf repository, or a file already on the
//! VM), write the join file 0600, enable `milvus-fleet-join.service`.

use serde::Serialize;

const TEMPLATE: &str = include_str!("../../cloud-init/join.yaml.j2");

#[derive(Debug, Default, Serialize)]
pub struct UserData {
    pub cluster: String,
    pub server: String,
    pub roles: Vec<String>,
    pub token: String,
    /// Human-readable expiry (UTC).
    pub expires: String,
    pub uses: u32,
    /// `deb [signed-by=...] URL SUITE COMPONENT` line.
    pub apt_source: String,
    /// The repository's ASCII-armoured key.
    pub apt_key: String,
    pub dnf_baseurl: String,
    pub dnf_gpgkey: String,
    /// A .deb or .rpm already on the VM.
    pub package_file: String,
}

pub fn render(data: &UserData) -> anyhow::Result<String> {
    let file = &data.package_file;
    if !file.is_empty()
        && (!file.starts_with('/')
            || !file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._+-~".contains(c)))
    {
        anyhow::bail!("--package-file {file:?}: use an absolute path of plain characters (a-z, 0-9, / . _ + - ~)");
    }
    let mut env = minijinja::Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()?;
    env.set_syntax(syntax);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_template("join.yaml", TEMPLATE)?;
    Ok(env
        .get_template("join.yaml")?
        .render(minijinja::value::Serde(data))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_installs_writes_the_join_file_and_enables_the_join_unit() {
        let data = UserData {
            cluster: "c".into(),
            server: "10.0.0.1:19500".into(),
            roles: vec!["storage".into()],
            token: "MFT1-x-y.z".into(),
            expires: "soon".into(),
            uses: 1,
            package_file: "/var/cache/milvus-fleet.deb".into(),
            ..Default::default()
        };
        let text = render(&data).unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        assert!(text.contains("      token = \"MFT1-x-y.z\"\n"), "{text}");
        assert!(text.contains("permissions: \"0600\""), "{text}");
        assert!(text.contains("[systemctl, enable, --now, --no-block, milvus-fleet-join.service]"));
        let bad = UserData {
            package_file: "/x; rm -rf /".into(),
            ..data
        };
        assert!(render(&bad).is_err());
    }
}
