-- Adds one agent. Every value is a parameter; names arrive already encrypted.
INSERT INTO Agents (AgentName, AgentAlias, AgentSecurityLevel, LoginPassword, AgentNameIndex, PasswordPeppered,
                    KeyEpoch, PepperEpoch)
VALUES (:name, :alias, :level, :password, :name_index, 1, :key_epoch, :key_epoch)
