-- Adds one agent. Every value is a parameter; names arrive already encrypted.
INSERT INTO Agents (AgentName, AgentAlias, AgentSecurityLevel, LoginPassword, AgentNameIndex, PasswordPeppered)
VALUES (:name, :alias, :level, :password, :name_index, 1)
